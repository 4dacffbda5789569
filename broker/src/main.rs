//! `broker [--config FILE]`: runs the webshop's in-memory MQTT broker until
//! Ctrl-C. See the library docs for what a restart loses.

use std::path::{Path, PathBuf};

use clap::Parser;

/// The process allocates with jemalloc, Rust and (unprefixed) C alike:
/// the allocator is the binary's choice, not its libraries'. Why jemalloc:
/// docs/PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Used when `--config` is not given and the file exists.
const DEFAULT_CONFIG: &str = "config/broker.toml";

/// Embedded MQTT 3.1.1 broker for the webshop services.
#[derive(Parser)]
#[command(name = "broker", version)]
struct Args {
    /// TOML config file. Default: config/broker.toml if it exists.
    /// Environment variables WEBSHOP_BROKER__* override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args.config.or_else(|| {
        let default = Path::new(DEFAULT_CONFIG);
        default.exists().then(|| default.to_path_buf())
    });
    broker::main_with_config(path.as_deref()).await
}
