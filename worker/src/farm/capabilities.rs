//! What this worker offers the farm: every task kind, the models found in its models
//! directory (under their own names and under the catalogue names they stand for), its device
//! and its pixel limit. The coordinator only hands out tasks whose models are all offered.

use tessera_core::job::ModelCatalog;
use tessera_proto::v1;

use super::tasks::file_stem;
use super::FarmArgs;
use tessera_nets::models::ModelDir;

/// The capabilities to register with.
pub fn detect(models: &ModelDir, args: &FarmArgs) -> anyhow::Result<v1::Capabilities> {
    let files = models.list()?;
    let catalog = ModelCatalog::default();
    let catalogue_names = catalog
        .clip
        .iter()
        .chain(&catalog.vqgan)
        .chain(catalog.upscale.iter().map(|m| &m.name));
    let mut names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    names.extend(
        catalogue_names
            .filter(|name| models.find(&file_stem(name)).is_ok())
            .cloned(),
    );
    names.sort();
    names.dedup();
    Ok(v1::Capabilities {
        kinds: [
            v1::TaskKind::Generate,
            v1::TaskKind::UpscaleTile,
            v1::TaskKind::Stitch,
        ]
        .map(|k| k as i32)
        .to_vec(),
        models: names,
        device: args.device.clone(),
        max_pixels: args.max_pixels,
    })
}
