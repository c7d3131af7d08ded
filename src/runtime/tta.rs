//! Test-time augmentation: the class probabilities averaged over flipped and shifted views.

use crate::imaging::GreyImage;

/// Test-time augmentation views: the image itself, its mirror image, and both shifted by
/// [`TTA_SHIFT`] of the side (diagonally, opposite ways), the flips and shifts training used.
pub const TTA_VIEWS: usize = 4;
pub const TTA_SHIFT: f32 = 0.03;

/// View `view` (0 is the image itself) of a prepared image.
pub fn tta_view(img: &GreyImage, view: usize) -> GreyImage {
    let (w, h) = img.dimensions();
    let shift = |img: &GreyImage, d: i64| {
        let d = (d as f32 * TTA_SHIFT * w.max(h) as f32).round() as i64;
        GreyImage::from_fn(w, h, |x, y| {
            let (sx, sy) = (x as i64 - d, y as i64 - d);
            if sx < 0 || sy < 0 || sx >= w as i64 || sy >= h as i64 {
                image::Luma([0.0])
            } else {
                *img.get_pixel(sx as u32, sy as u32)
            }
        })
    };
    match view {
        0 => img.clone(),
        1 => image::imageops::flip_horizontal(img),
        2 => shift(img, 1),
        _ => shift(&image::imageops::flip_horizontal(img), -1),
    }
}
