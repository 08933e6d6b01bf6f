//! `tessera-worker`: runs Tessera's models, as a farm worker or as local commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tessera_core::tiles::TileSpec;
use tessera_nets::esrgan::SrModel;
use tessera_nets::models::ModelDir;
use tessera_nets::upscale::Upscaler;
use tessera_nets::{device, imageio};
use tessera_worker::{bench, malloc};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Directory of model files (default: $TESSERA_MODELS, else .deps/models).
    #[arg(long, global = true)]
    models: Option<PathBuf>,
    /// Farm mode: with `--coordinator URL` and no command, pull tasks from the farm.
    #[command(flatten)]
    farm: tessera_worker::farm::FarmArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upscale one picture with a super-resolution model.
    Upscale(UpscaleArgs),
    /// Render one prompt to a picture with CLIP and VQGAN on this machine.
    Render(Box<tessera_worker::render_cmd::RenderArgs>),
    /// Inspect the installed models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Measure our models against the PyTorch reference on this machine.
    Bench(bench::BenchArgs),
}

#[derive(clap::Args, Debug)]
struct UpscaleArgs {
    /// Model name (see `tessera-worker models list`).
    #[arg(long, default_value = "realesrgan-x4plus")]
    model: String,
    /// Picture to upscale (PNG, JPEG or WebP).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the lossless PNG result.
    #[arg(long)]
    output: PathBuf,
    /// Largest tile side in input pixels; 0 upscales the whole picture at once.
    #[arg(long, default_value_t = TileSpec::default().tile)]
    tile: u32,
    /// Context each tile reads beyond what it contributes, in input pixels.
    #[arg(long, default_value_t = TileSpec::default().pad)]
    tile_pad: u32,
    /// Cross-fade between neighbouring tiles, in input pixels (even).
    #[arg(long, default_value_t = TileSpec::default().overlap)]
    tile_overlap: u32,
    /// Final scale relative to the input, when it should differ from the model's own.
    #[arg(long)]
    outscale: Option<f64>,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// List installed models with their source and parameter count.
    List,
}

fn main() -> anyhow::Result<()> {
    malloc::tune_allocator();
    let cli = Cli::parse();
    let models = ModelDir::resolve(cli.models);
    let Some(command) = cli.command else {
        let Some(url) = cli.farm.coordinator.clone() else {
            anyhow::bail!("give a command (see --help), or --coordinator URL to work for a farm");
        };
        // Farm mode sets up its logs and traces itself, inside its runtime.
        return tessera_worker::farm::run(&models, cli.farm, url);
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match command {
        Command::Upscale(args) => upscale(&models, args),
        Command::Render(args) => tessera_worker::render_cmd::run(&models, *args),
        Command::Models {
            command: ModelsCommand::List,
        } => list_models(&models),
        Command::Bench(args) => bench::run(&models, args),
    }
}

fn upscale(models: &ModelDir, args: UpscaleArgs) -> anyhow::Result<()> {
    let device = device::parse(&args.device)?;
    let file = models.find(&args.model)?;
    let model = SrModel::load(&file.path, device)?;
    let spec = TileSpec {
        tile: args.tile,
        pad: args.tile_pad,
        overlap: args.tile_overlap,
    };
    let picture = imageio::read(&args.input)?;
    let upscaler = Upscaler::new(model, spec, device);
    // Check the tiling before the (slow) network runs.
    upscaler.plan(picture.width, picture.height)?;
    let started = std::time::Instant::now();
    let result = upscaler.upscale_picture(&picture, args.outscale)?;
    imageio::write_png(&args.output, &result)?;
    eprintln!(
        "{} ({}x{}) -> {} ({}x{}) with {} in {:.1} s",
        args.input.display(),
        picture.width,
        picture.height,
        args.output.display(),
        result.width,
        result.height,
        file.name,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn list_models(models: &ModelDir) -> anyhow::Result<()> {
    let files = models.list()?;
    println!(
        "{:<28} {:<12} {:>12}  {:<40} source",
        "name", "format", "parameters", "network"
    );
    for file in files {
        let (params, network) = match SrModel::load(&file.path, tch::Device::Cpu) {
            Ok(model) => (model.parameter_count().to_string(), model.description()),
            Err(err) => ("-".to_string(), format!("not loadable: {err}")),
        };
        println!(
            "{:<28} {:<12} {:>12}  {:<40} {}",
            file.name,
            file.format.label(),
            params,
            network,
            file.path.display()
        );
    }
    Ok(())
}
