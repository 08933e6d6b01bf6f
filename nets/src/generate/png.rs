//! PNG output that carries its own recipe: the seed and every setting in text chunks, so any
//! picture can be reproduced (or its settings reused) from the file alone.
//!
//! Each setting is one chunk (`Prompt`, `Seed`, `width`, …) for people and tools that list
//! them, and `Tessera settings` holds the whole [`Settings`] as JSON for exact reuse. Latin-1
//! text goes in `tEXt` chunks; anything else (prompts in other scripts) in UTF-8 `iTXt`.

use super::settings::Settings;
use image::RgbImage;

/// Keyword of the chunk with the full settings as JSON.
pub const SETTINGS_KEYWORD: &str = "Tessera settings";

/// A PNG that could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("encoding the PNG failed: {0}")]
pub struct PngError(#[from] png::EncodingError);

/// The text chunks written for these settings, as (keyword, text).
pub fn metadata(settings: &Settings) -> Vec<(String, String)> {
    let mut chunks = vec![
        ("Software".to_string(), "Tessera (VQGAN+CLIP)".to_string()),
        ("Prompt".to_string(), settings.prompts.text_string()),
        (
            "Image prompts".to_string(),
            settings.prompts.images_string(),
        ),
        ("Noise prompts".to_string(), settings.prompts.noise_string()),
        ("Seed".to_string(), settings.seed.to_string()),
    ];
    let json = serde_json::to_value(settings).expect("settings serialise");
    if let serde_json::Value::Object(fields) = &json {
        for (key, value) in fields
            .iter()
            .filter(|(k, _)| !["prompts", "seed"].contains(&k.as_str()))
        {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            chunks.push((key.clone(), text));
        }
    }
    chunks.push((SETTINGS_KEYWORD.to_string(), json.to_string()));
    chunks
}

/// Encodes `image` as an 8-bit RGB PNG with `settings` in its text chunks.
pub fn encode_png(image: &RgbImage, settings: &Settings) -> Result<Vec<u8>, PngError> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (keyword, text) in metadata(settings) {
            if text.chars().all(|c| u32::from(c) < 256) {
                encoder.add_text_chunk(keyword, text)?;
            } else {
                encoder.add_itxt_chunk(keyword, text)?;
            }
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(image.as_raw())?;
        writer.finish()?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::prompt::PromptSpec;

    fn read_chunks(bytes: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        let info = reader.info();
        let mut chunks: Vec<(String, String)> = info
            .uncompressed_latin1_text
            .iter()
            .map(|c| (c.keyword.clone(), c.text.clone()))
            .collect();
        chunks.extend(
            info.utf8_text
                .iter()
                .map(|c| (c.keyword.clone(), c.get_text().unwrap())),
        );
        (chunks, pixels)
    }

    #[test]
    fn settings_and_seed_round_trip_through_the_text_chunks() {
        let mut settings = Settings::new(
            PromptSpec::parse("a lighthouse:2|fog:-1", "", "7:0.5").unwrap(),
            1234,
        );
        settings.prompts.phases[0][0].target = "灯台 at dusk".into();
        let image = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let bytes = encode_png(&image, &settings).unwrap();
        let (chunks, pixels) = read_chunks(&bytes);
        assert_eq!(pixels, image.as_raw().clone());
        let get = |k: &str| {
            chunks
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("Seed").as_deref(), Some("1234"));
        assert_eq!(get("Prompt").as_deref(), Some("灯台 at dusk:2|fog:-1"));
        assert_eq!(get("Noise prompts").as_deref(), Some("7:0.5"));
        assert_eq!(get("learning_rate").as_deref(), Some("0.1"));
        assert_eq!(get("optimiser").as_deref(), Some("Adam"));
        let json = get(SETTINGS_KEYWORD).unwrap();
        assert_eq!(serde_json::from_str::<Settings>(&json).unwrap(), settings);
    }
}
