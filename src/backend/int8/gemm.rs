//! `u8 x i8 -> i32` matrix products for the int8 engine: `C[p][n] = sum_k A[p][k] * B[n][k]`.
//!
//! `A` holds quantised activations row by row (one row per output pixel, `k` padded to a
//! multiple of 4); `B` holds the weights packed in blocks of 16 output channels as
//! `[block][k / 4][16][4]`, the layout AVX-512 VNNI's `vpdpbusd` consumes: one instruction
//! multiplies 64 byte pairs and adds them, four at a time, into 16 lanes. CPUs with AVX2 but
//! no VNNI (AMD Zen 1-3, most Intel desktops before Ice Lake) get the weights a second time,
//! widened to `i16` as `[block][k / 2][16][2]`, for `vpmaddwd`: one instruction multiplies 16
//! pairs and adds them two at a time into 8 lanes, exactly (`vpmaddubsw`, which takes the bytes
//! as they are, saturates at `i16` and would not give the same sums). Other CPUs get a portable
//! loop over the byte layout. All three give the same results.

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
    /// The same weights widened for the AVX2 kernel, `[blocks][k2][16][2]`; empty where that
    /// kernel is not the one that runs.
    wide: Vec<i16>,
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
        let mut packed = Self {
            data,
            n,
            k: kp,
            sums,
            wide: Vec::new(),
        };
        if kernel() == Kernel::Avx2 {
            packed.wide = packed.widened();
        }
        packed
    }

    /// `data` re-laid as `[blocks][k2][16][2]` i16 (same blocks, pairs of depth per lane).
    fn widened(&self) -> Vec<i16> {
        let mut wide = vec![0i16; self.data.len()];
        for b in 0..self.blocks() {
            let block = &self.data[b * self.k * LANES..(b + 1) * self.k * LANES];
            let out = &mut wide[b * self.k * LANES..(b + 1) * self.k * LANES];
            for i in 0..self.k {
                for lane in 0..LANES {
                    let v = block[(i / 4) * LANES * 4 + lane * 4 + i % 4];
                    out[(i / 2) * LANES * 2 + lane * 2 + i % 2] = i16::from(v);
                }
            }
        }
        wide
    }

    fn blocks(&self) -> usize {
        self.n.div_ceil(LANES)
    }
}

/// The matrix-product kernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI over the byte layout.
    Vnni,
    /// AVX2 over the widened layout.
    Avx2,
    /// Plain Rust over the byte layout.
    Portable,
}

static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();

/// The kernel for this CPU (detected once, at the first product or packing).
pub fn kernel() -> Kernel {
    *KERNEL.get_or_init(detect)
}

/// The best kernel this CPU has.
fn detect() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            return Kernel::Vnni;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Kernel::Avx2;
        }
    }
    Kernel::Portable
}

/// Whether this CPU can run `kernel`.
fn supported(kernel: Kernel) -> bool {
    match kernel {
        Kernel::Portable => true,
        Kernel::Vnni => detect() == Kernel::Vnni,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2 => false,
    }
}

/// Chooses another kernel than the CPU's best for this process (benchmarks compare kernels
/// side by side this way). Takes effect only before the first product or packing, and only for
/// a kernel the CPU can run; returns the kernel in force.
pub fn prefer(wanted: Kernel) -> Kernel {
    *KERNEL.get_or_init(|| if supported(wanted) { wanted } else { detect() })
}

/// Whether this CPU runs the VNNI kernel.
pub fn has_vnni() -> bool {
    kernel() == Kernel::Vnni
}

/// `C = A B^T` for `rows` rows of `a` (each `w.k` bytes); `c` gets `rows x blocks * 16` values.
/// Runs on the calling thread: the engine parallelises over rows itself.
pub fn matmul(a: &[u8], rows: usize, w: &PackedWeights, c: &mut [i32]) {
    assert!(a.len() >= rows * w.k && c.len() >= rows * w.blocks() * LANES);
    match kernel() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and VNNI (detected); the kernel reads `rows * w.k` bytes
        // of `a`, all of `w.data`, and writes `rows` rows of `c`, which the assert guarantees.
        Kernel::Vnni => unsafe { vnni_kernel(a, rows, w, c) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 if w.wide.len() == w.data.len() => {
            // The activations widened once per call, so that each pair of depths is one
            // 32-bit broadcast in the kernel.
            let wide_a: Vec<i16> = a[..rows * w.k].iter().map(|&v| i16::from(v)).collect();
            // SAFETY: the CPU has AVX2 (detected); `wide_a` holds `rows * w.k` values, `w.wide`
            // all blocks, and `c` `rows` rows (the assert).
            unsafe { avx2_kernel(&wide_a, rows, w, c) }
        }
        _ => portable_kernel(a, rows, w, c),
    }
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

/// Rows of `A` the AVX2 kernel computes together: 6 rows x 16 lanes take 12 of its 16
/// registers as accumulators.
const AVX2_ROWS: usize = 6;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_kernel(a: &[i16], rows: usize, w: &PackedWeights, out: &mut [i32]) {
    // SAFETY: see `matmul`: the pointers stay inside `a`, `w.wide` and `out`.
    unsafe {
        let width = w.blocks() * LANES;
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(AVX2_ROWS);
            let a0 = a.as_ptr().add(r * w.k);
            for b in 0..w.blocks() {
                let o = out.as_mut_ptr().add(r * width + b * LANES);
                // The full tile with its row count a constant, so that the accumulators stay
                // in registers; the last rows with theirs.
                if n == AVX2_ROWS {
                    avx2_tile(a0, w, b, AVX2_ROWS, o, width);
                } else {
                    avx2_tile(a0, w, b, n, o, width);
                }
            }
            r += n;
        }
    }
}

/// Rows `a0..a0 + n` (each `w.k` values) times block `b` of `w.wide`, stored at `o` (rows
/// `width` apart). Inlined into [`avx2_kernel`], whose AVX2 the intrinsics then use.
///
/// # Safety
/// The CPU has AVX2; `n <= AVX2_ROWS`; the rows, the block and the outputs are in bounds.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_tile(
    a0: *const i16,
    w: &PackedWeights,
    b: usize,
    n: usize,
    o: *mut i32,
    width: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let block = w.wide.as_ptr().add(b * w.k * LANES);
        let mut lo = [_mm256_setzero_si256(); AVX2_ROWS];
        let mut hi = [_mm256_setzero_si256(); AVX2_ROWS];
        for k2 in 0..w.k / 2 {
            let wl = _mm256_loadu_si256(block.add(k2 * LANES * 2) as *const _);
            let wh = _mm256_loadu_si256(block.add(k2 * LANES * 2 + 16) as *const _);
            for i in 0..n {
                let x = (a0.add(i * w.k + k2 * 2) as *const i32).read_unaligned();
                let x = _mm256_set1_epi32(x);
                lo[i] = _mm256_add_epi32(lo[i], _mm256_madd_epi16(wl, x));
                hi[i] = _mm256_add_epi32(hi[i], _mm256_madd_epi16(wh, x));
            }
        }
        for i in 0..n {
            _mm256_storeu_si256(o.add(i * width) as *mut _, lo[i]);
            _mm256_storeu_si256(o.add(i * width + 8) as *mut _, hi[i]);
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
        for &(rows, n, k) in &[
            (1, 4, 7),
            (37, 24, 27),
            (70, 33, 288),
            (5, 512, 6400),
            (13, 16, 2),
        ] {
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
            // The AVX2 kernel on its own layout, wherever the CPU has AVX2.
            let mut avx2 = portable.clone();
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut wide = packed.clone();
                wide.wide = wide.widened();
                let wide_a: Vec<i16> = a_padded.iter().map(|&v| i16::from(v)).collect();
                avx2.fill(0);
                // SAFETY: AVX2 is present; the buffers have the sizes the kernel reads.
                unsafe { avx2_kernel(&wide_a, rows, &wide, &mut avx2) };
            }
            for r in 0..rows {
                for o in 0..n {
                    let want: i32 = (0..k)
                        .map(|i| i32::from(a[r * k + i]) * i32::from(w[o * k + i]))
                        .sum();
                    assert_eq!(c[r * width + o], want, "rows {rows} n {n} k {k}");
                    assert_eq!(portable[r * width + o], want);
                    assert_eq!(avx2[r * width + o], want, "avx2: rows {rows} n {n} k {k}");
                }
            }
            assert_eq!(
                packed.sums[n - 1],
                w[(n - 1) * k..].iter().map(|&v| i32::from(v)).sum::<i32>()
            );
        }
    }

    /// The largest products (255 x 127 and 255 x -127, which a saturating `i16` sum of two
    /// would clip) come out exact on the kernel this CPU runs.
    #[test]
    fn extreme_values_do_not_saturate() {
        let (rows, n, k) = (7, 20, 64);
        let a = vec![255u8; rows * k];
        let w: Vec<i8> = (0..n * k)
            .map(|i| if (i / k) % 2 == 0 { 127 } else { -127 })
            .collect();
        let packed = PackedWeights::pack(&w, n, k);
        let width = n.div_ceil(LANES) * LANES;
        let mut c = vec![0i32; rows * width];
        matmul(&a, rows, &packed, &mut c);
        for r in 0..rows {
            for o in 0..n {
                let sign = if o % 2 == 0 { 1 } else { -1 };
                assert_eq!(
                    c[r * width + o],
                    sign * 255 * 127 * k as i32,
                    "{:?}",
                    kernel()
                );
            }
        }
    }
}
