//! The files the demo's nurses attach: a wound photo (a real JPEG of a few hundred
//! kilobytes) and a signature on the consent form (a small SVG), both made from the
//! seed, so a run can be replayed and every byte checked.

use jpeg_encoder::{ColorType, Encoder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::DemoResult;

const WIDTH: u16 = 800;
const HEIGHT: u16 = 600;

/// A photo of skin with a reddish wound, with sensor noise: 800x600, quality 90.
pub fn wound_photo(seed: u64) -> DemoResult<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (cx, cy) = (
        rng.random_range(250.0..550.0f32),
        rng.random_range(200.0..400.0f32),
    );
    let (rx, ry) = (
        rng.random_range(60.0..160.0f32),
        rng.random_range(30.0..90.0f32),
    );
    let skin = [
        rng.random_range(150..230u8),
        rng.random_range(100..170u8),
        rng.random_range(70..130u8),
    ];
    let mut pixels = Vec::with_capacity(usize::from(WIDTH) * usize::from(HEIGHT) * 3);
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let (dx, dy) = ((f32::from(x) - cx) / rx, (f32::from(y) - cy) / ry);
            let inside = (1.0 - (dx * dx + dy * dy)).clamp(0.0, 1.0);
            let shade = 0.8 + 0.2 * (f32::from(y) / f32::from(HEIGHT));
            for (c, base) in skin.iter().enumerate() {
                let wound = [170.0, 30.0, 40.0][c];
                let v = f32::from(*base) * shade * (1.0 - inside) + wound * inside;
                let noise = rng.random_range(-18.0..18.0f32);
                pixels.push((v + noise).clamp(0.0, 255.0) as u8);
            }
        }
    }
    let mut out = Vec::new();
    Encoder::new(&mut out, 90).encode(&pixels, WIDTH, HEIGHT, ColorType::Rgb)?;
    Ok(out)
}

/// A signature: a few strokes of an SVG path.
pub fn signature(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5167);
    let mut path = String::from("M 20 60");
    let mut x = 20.0f32;
    for _ in 0..rng.random_range(12..24) {
        x += rng.random_range(8.0..22.0f32);
        path.push_str(&format!(
            " Q {:.1} {:.1} {:.1} {:.1}",
            x - 6.0,
            rng.random_range(10.0..110.0f32),
            x,
            rng.random_range(40.0..80.0f32)
        ));
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"400\" height=\"120\">\
         <path d=\"{path}\" fill=\"none\" stroke=\"#123\" stroke-width=\"2\"/></svg>\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photos_are_jpegs_of_a_few_hundred_kilobytes_and_replay_from_the_seed() {
        let a = wound_photo(7).unwrap();
        assert_eq!(&a[..3], &[0xff, 0xd8, 0xff], "JPEG start of image");
        assert_eq!(&a[a.len() - 2..], &[0xff, 0xd9], "JPEG end of image");
        assert!((150_000..900_000).contains(&a.len()), "{} bytes", a.len());
        assert_eq!(a, wound_photo(7).unwrap());
        assert_ne!(a, wound_photo(8).unwrap());
        let s = signature(7);
        assert!(s.starts_with(b"<svg") && s == signature(7));
    }
}
