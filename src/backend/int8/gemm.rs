//! `u8 x i8 -> i32` matrix products for the int8 engine: `C[p][n] = sum_k A[p][k] * B[n][k]`.
//!
//! `A` holds quantised activations row by row (one row per output pixel, `k` padded to a
//! multiple of 4); `B` holds the weights packed in blocks of 16 output channels as
//! `[block][k / 4][16][4]`, the layout AVX-512 VNNI's `vpdpbusd` consumes: one instruction
//! multiplies 64 byte pairs and adds them, four at a time, into 16 lanes. CPUs without VNNI
//! get a portable loop over the same layout (same results, slower).

/// Output channels per packed block.
pub const LANES: usize = 16;
/// Rows of `A` computed together by the kernel.
const ROWS: usize = 4;

/// Weights packed for the kernel.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// `[blocks][k4][16][4]`.
    pub data: Vec<i8>,
    /// Real output channels (the last block is padded with zeros).
    pub n: usize,
    /// Padded depth, a multiple of 4.
    pub k: usize,
    /// Per output channel: sum of its weights, to correct for the activations' zero point.
    pub sums: Vec<i32>,
}

/// Depth padded to a multiple of 4.
pub fn padded_depth(k: usize) -> usize {
    k.div_ceil(4) * 4
}

impl PackedWeights {
    /// Packs row-major `[n][k]` weights.
    pub fn pack(w: &[i8], n: usize, k: usize) -> Self {
        let kp = padded_depth(k);
        let blocks = n.div_ceil(LANES);
        let mut data = vec![0i8; blocks * kp * LANES];
        for o in 0..n {
            let (b, lane) = (o / LANES, o % LANES);
            for i in 0..k {
                data[(b * kp / 4 + i / 4) * LANES * 4 + lane * 4 + i % 4] = w[o * k + i];
            }
        }
        let sums = (0..n)
            .map(|o| w[o * k..(o + 1) * k].iter().map(|&v| i32::from(v)).sum())
            .collect();
        Self {
            data,
            n,
            k: kp,
            sums,
        }
    }

    fn blocks(&self) -> usize {
        self.n.div_ceil(LANES)
    }
}

/// Whether this CPU runs the VNNI kernel (detected once).
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C = A B^T` for `rows` rows of `a` (each `w.k` bytes); `c` gets `rows x blocks * 16` values.
/// Runs on the calling thread: the engine parallelises over rows itself.
pub fn matmul(a: &[u8], rows: usize, w: &PackedWeights, c: &mut [i32]) {
    assert!(a.len() >= rows * w.k && c.len() >= rows * w.blocks() * LANES);
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: the CPU has AVX-512F and VNNI (checked); the kernel reads `rows * w.k` bytes
        // of `a`, all of `w.data`, and writes `rows` rows of `c`, which the assert guarantees.
        unsafe { vnni_kernel(a, rows, w, c) };
        return;
    }
    portable_kernel(a, rows, w, c);
}

fn portable_kernel(a: &[u8], rows: usize, w: &PackedWeights, out: &mut [i32]) {
    let width = w.blocks() * LANES;
    for r in 0..rows {
        let row = &a[r * w.k..(r + 1) * w.k];
        for b in 0..w.blocks() {
            let mut acc = [0i32; LANES];
            let block = &w.data[b * w.k * LANES..(b + 1) * w.k * LANES];
            for (k4, chunk) in block.chunks_exact(LANES * 4).enumerate() {
                let x = &row[k4 * 4..k4 * 4 + 4];
                for (lane, acc) in acc.iter_mut().enumerate() {
                    let wv = &chunk[lane * 4..lane * 4 + 4];
                    *acc += x
                        .iter()
                        .zip(wv)
                        .map(|(&x, &w)| i32::from(x) * i32::from(w))
                        .sum::<i32>();
                }
            }
            out[r * width + b * LANES..r * width + (b + 1) * LANES].copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn vnni_kernel(a: &[u8], rows: usize, w: &PackedWeights, out: &mut [i32]) {
    use std::arch::x86_64::*;
    // SAFETY: see `matmul`: the pointers stay inside `a`, `w.data` and `out`.
    unsafe {
        let width = w.blocks() * LANES;
        let k4s = w.k / 4;
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(ROWS);
            let mut b = 0;
            // Two blocks of 16 channels at a time: each broadcast input feeds two products.
            while b + 1 < w.blocks() {
                let b0 = w.data.as_ptr().add(b * w.k * LANES);
                let b1 = w.data.as_ptr().add((b + 1) * w.k * LANES);
                let mut acc0 = [_mm512_setzero_si512(); ROWS];
                let mut acc1 = [_mm512_setzero_si512(); ROWS];
                for k4 in 0..k4s {
                    let w0 = _mm512_loadu_si512(b0.add(k4 * LANES * 4) as *const _);
                    let w1 = _mm512_loadu_si512(b1.add(k4 * LANES * 4) as *const _);
                    for i in 0..n {
                        let x =
                            (a.as_ptr().add((r + i) * w.k + k4 * 4) as *const i32).read_unaligned();
                        let x = _mm512_set1_epi32(x);
                        acc0[i] = _mm512_dpbusd_epi32(acc0[i], x, w0);
                        acc1[i] = _mm512_dpbusd_epi32(acc1[i], x, w1);
                    }
                }
                for i in 0..n {
                    let o = out.as_mut_ptr().add((r + i) * width + b * LANES);
                    _mm512_storeu_si512(o as *mut _, acc0[i]);
                    _mm512_storeu_si512(o.add(LANES) as *mut _, acc1[i]);
                }
                b += 2;
            }
            if b < w.blocks() {
                let block = w.data.as_ptr().add(b * w.k * LANES);
                let mut acc = [_mm512_setzero_si512(); ROWS];
                for k4 in 0..k4s {
                    let wv = _mm512_loadu_si512(block.add(k4 * LANES * 4) as *const _);
                    for (i, acc) in acc.iter_mut().enumerate().take(n) {
                        let x =
                            (a.as_ptr().add((r + i) * w.k + k4 * 4) as *const i32).read_unaligned();
                        *acc = _mm512_dpbusd_epi32(*acc, _mm512_set1_epi32(x), wv);
                    }
                }
                for (i, acc) in acc.iter().enumerate().take(n) {
                    _mm512_storeu_si512(
                        out.as_mut_ptr().add((r + i) * width + b * LANES) as *mut _,
                        *acc,
                    );
                }
            }
            r += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn both_kernels_match_a_plain_product() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for &(rows, n, k) in &[(1, 4, 7), (37, 24, 27), (70, 33, 288), (5, 512, 6400)] {
            let a: Vec<u8> = (0..rows * k).map(|_| rng.random()).collect();
            let w: Vec<i8> = (0..n * k).map(|_| rng.random_range(-127..=127)).collect();
            let packed = PackedWeights::pack(&w, n, k);
            let kp = packed.k;
            let mut a_padded = vec![0u8; rows * kp];
            for r in 0..rows {
                a_padded[r * kp..r * kp + k].copy_from_slice(&a[r * k..(r + 1) * k]);
            }
            let width = n.div_ceil(LANES) * LANES;
            let mut c = vec![0i32; rows * width];
            matmul(&a_padded, rows, &packed, &mut c);
            let mut portable = vec![0i32; rows * width];
            portable_kernel(&a_padded, rows, &packed, &mut portable);
            for r in 0..rows {
                for o in 0..n {
                    let want: i32 = (0..k)
                        .map(|i| i32::from(a[r * k + i]) * i32::from(w[o * k + i]))
                        .sum();
                    assert_eq!(c[r * width + o], want, "rows {rows} n {n} k {k}");
                    assert_eq!(portable[r * width + o], want);
                }
            }
            assert_eq!(
                packed.sums[n - 1],
                w[(n - 1) * k..].iter().map(|&v| i32::from(v)).sum::<i32>()
            );
        }
    }
}
