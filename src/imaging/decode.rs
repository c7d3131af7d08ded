//! Decoding scans into one grey channel of `f32` in `[0, 1]`.
//!
//! PNG (8/16-bit, grey/RGB/RGBA) and JPEG. MRI is grey; colour inputs are converted to luma
//! (the JPEGs of the shared data carry three equal channels). Decoding is bounded, and a file that
//! is cut short is an error rather than a half-grey picture.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Limits, Luma};

use crate::core::error::{DecodeError, Error, Result};

/// A grey image with intensities in `[0, 1]`.
pub type GreyImage = ImageBuffer<Luma<f32>, Vec<f32>>;

/// Largest side accepted, in pixels: protects memory against hostile headers.
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoded size accepted, in pixels.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;
/// Largest decoded buffer accepted, in bytes (pixels times bytes per pixel as the file stores
/// them): a 16-bit RGBA picture of 64 M pixels would need 512 MiB before any conversion.
pub const MAX_DECODED_BYTES: u64 = 256 * 1024 * 1024;
/// Images longer than this on either side are shrunk (area averaging, aspect kept) right after
/// decoding, before the `f32` copy: the pipeline then never holds more than a few 2048 x 2048
/// planes. The network sees 150-260 px and no slice of the training data is larger than 1446
/// px, so no answer changes.
pub const WORKING_SIDE: u32 = 2048;

/// Image file extensions scanned in data folders.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Whether a path names a file we try to read as an image (by extension, case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Reads and decodes a file.
pub fn load_grey(path: &Path) -> Result<GreyImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_grey(&bytes).map_err(|e| Error::unreadable_image(path, e))
}

/// What a file held before conversion to grey.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub format: &'static str,
    /// The size the file stores (the decoded image is at most [`WORKING_SIDE`] a side).
    pub width: u32,
    pub height: u32,
    /// Colour layout as decoded, e.g. "L8", "Rgb8", "La16".
    pub color: String,
    pub bits_per_channel: u16,
    /// Mean spread between the colour channels of a pixel, in `[0, 1]` (0 for grey files and
    /// for colour files whose channels are equal, like the shared data's JPEGs).
    pub colourfulness: f32,
}

/// Decodes PNG or JPEG bytes. The error's message is fit to show a user.
pub fn decode_grey(bytes: &[u8]) -> std::result::Result<GreyImage, DecodeError> {
    decode_grey_with_info(bytes).map(|(img, _)| img)
}

/// [`decode_grey`], also telling what the file held.
pub fn decode_grey_with_info(
    bytes: &[u8],
) -> std::result::Result<(GreyImage, ImageInfo), DecodeError> {
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat)?;
    match format {
        ImageFormat::Png => {}
        ImageFormat::Jpeg => {
            if !jpeg_is_complete(bytes) {
                return Err(DecodeError::TruncatedJpeg);
            }
        }
        other => {
            return Err(DecodeError::UnsupportedFormat(
                other.extensions_str().first().unwrap_or(&"this kind of"),
            ));
        }
    }
    let (w, h) = bounded_reader(bytes, format)
        .into_dimensions()
        .map_err(DecodeError::Header)?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(DecodeError::TooLarge {
            width: w,
            height: h,
        });
    }
    if w < 8 || h < 8 {
        return Err(DecodeError::TooSmall {
            width: w,
            height: h,
        });
    }
    let decoder = bounded_reader(bytes, format)
        .into_decoder()
        .map_err(DecodeError::Header)?;
    let decoded_bytes = decoder.total_bytes();
    if decoded_bytes > MAX_DECODED_BYTES {
        return Err(DecodeError::TooMuchMemory {
            width: w,
            height: h,
            mebibytes: decoded_bytes.div_ceil(1024 * 1024),
        });
    }
    let mut img = DynamicImage::from_decoder(decoder).map_err(DecodeError::Corrupt)?;
    if w.max(h) > WORKING_SIDE {
        img = img.thumbnail(WORKING_SIDE, WORKING_SIDE);
    }
    let color = img.color();
    let info = ImageInfo {
        format: if format == ImageFormat::Png {
            "PNG"
        } else {
            "JPEG"
        },
        width: w,
        height: h,
        color: format!("{color:?}"),
        bits_per_channel: color.bits_per_pixel() / u16::from(color.channel_count()),
        colourfulness: if color.has_color() {
            colourfulness(&img)
        } else {
            0.0
        },
    };
    // Luma weights sum to 1 only up to rounding: a white RGB pixel can come out at 1.0000001.
    let mut grey = img.to_luma32f();
    grey.pixels_mut()
        .for_each(|p| p.0[0] = p.0[0].clamp(0.0, 1.0));
    Ok((grey, info))
}

/// Mean of `max(r, g, b) - min(r, g, b)` over the pixels that are not near black (at most
/// about 250 000 sampled), so a colour picture on a black background still counts as colour.
pub(super) fn colourfulness(img: &image::DynamicImage) -> f32 {
    let rgb = img.to_rgb8();
    let step = ((rgb.width() as usize * rgb.height() as usize) / 250_000).max(1);
    let (mut sum, mut n) = (0u64, 0u64);
    for p in rgb.pixels().step_by(step) {
        let [r, g, b] = p.0;
        let (hi, lo) = (r.max(g).max(b), r.min(g).min(b));
        if hi > 25 {
            sum += u64::from(hi - lo);
            n += 1;
        }
    }
    sum as f32 / (255.0 * n.max(1) as f32)
}

/// A reader that refuses images over the side and memory limits.
fn bounded_reader(bytes: &[u8], format: ImageFormat) -> ImageReader<Cursor<&[u8]>> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // Decoders allocate a little beyond the pixel buffer.
    limits.max_alloc = Some(MAX_DECODED_BYTES + 16 * 1024 * 1024);
    reader.limits(limits);
    reader
}

/// A JPEG is complete when an end-of-image marker follows its last start-of-scan marker.
/// Entropy-coded data stuffs every 0xFF with 0x00, so 0xFFD9 there is always a real marker.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(sos) => bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn gradient() -> image::GrayImage {
        image::GrayImage::from_fn(64, 48, |x, y| Luma([((x * 3 + y) % 256) as u8]))
    }

    #[test]
    fn png_and_jpeg_decode_to_unit_range() {
        let img = image::DynamicImage::ImageLuma8(gradient());
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let grey = decode_grey(&encode(&img, format)).unwrap();
            assert_eq!(grey.dimensions(), (64, 48));
            assert!(grey.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])));
        }
    }

    #[test]
    fn sixteen_bit_and_rgba_png_decode() {
        let g16 =
            image::ImageBuffer::<Luma<u16>, _>::from_fn(32, 32, |x, _| Luma([x as u16 * 2000]));
        let grey = decode_grey(&encode(
            &image::DynamicImage::ImageLuma16(g16),
            ImageFormat::Png,
        ))
        .unwrap();
        assert!((grey.get_pixel(31, 0).0[0] - 62000.0 / 65535.0).abs() < 1e-3);
        let rgba = image::RgbaImage::from_pixel(16, 16, image::Rgba([200, 200, 200, 255]));
        let grey = decode_grey(&encode(
            &image::DynamicImage::ImageRgba8(rgba),
            ImageFormat::Png,
        ))
        .unwrap();
        assert!((grey.get_pixel(3, 3).0[0] - 200.0 / 255.0).abs() < 1e-2);
    }

    #[test]
    fn white_colour_pixels_stay_within_one() {
        // Luma weights round to 1.0000001 on white RGB (found by the decode fuzz target).
        let white = image::RgbImage::from_pixel(16, 16, image::Rgb([255, 255, 255]));
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let grey = decode_grey(&encode(
                &image::DynamicImage::ImageRgb8(white.clone()),
                format,
            ))
            .unwrap();
            assert!(
                grey.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])),
                "{format:?}"
            );
        }
    }

    #[test]
    fn truncated_files_are_errors() {
        let img = image::DynamicImage::ImageLuma8(gradient());
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let bytes = encode(&img, format);
            let cut = &bytes[..bytes.len() * 2 / 3];
            assert!(
                decode_grey(cut).is_err(),
                "{format:?} cut short must not decode"
            );
        }
        assert!(decode_grey(b"hello, not an image").is_err());
        assert!(decode_grey(&[]).is_err());
    }

    #[test]
    fn large_images_are_shrunk_to_the_working_side_and_huge_buffers_refused() {
        let wide = image::GrayImage::from_fn(4096, 1024, |x, _| Luma([(x / 16) as u8]));
        let (grey, info) = decode_grey_with_info(&encode(
            &image::DynamicImage::ImageLuma8(wide),
            ImageFormat::Png,
        ))
        .unwrap();
        assert_eq!(grey.dimensions(), (WORKING_SIDE, WORKING_SIDE / 4));
        assert_eq!((info.width, info.height), (4096, 1024));
        // 16-bit RGBA at 8192 x 4096 is 256 MiB of pixels before any conversion.
        let rgba16 = image::ImageBuffer::<image::Rgba<u16>, _>::new(8192, 4097);
        let err = decode_grey(&encode(
            &image::DynamicImage::ImageRgba16(rgba16),
            ImageFormat::Png,
        ))
        .unwrap_err();
        assert!(matches!(err, DecodeError::TooMuchMemory { .. }), "{err}");
        assert!(err.to_string().contains("8192x4097"), "{err}");
    }

    #[test]
    fn other_formats_are_refused_with_a_sentence() {
        // A GIF header is enough for the sniffing to refuse it.
        let err = decode_grey(b"GIF89a\x10\x00\x10\x00")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
