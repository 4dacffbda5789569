use std::path::PathBuf;

use clap::Parser;

/// The process allocates with jemalloc, Rust and (unprefixed) C alike:
/// the allocator is the binary's choice, not its libraries'. Why jemalloc:
/// docs/PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Runs this node from its config file; see `config/` for the keys.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML). Default: config/order.toml if it exists.
    /// Environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let default = PathBuf::from("config/order.toml");
    let file = args.config.or_else(|| default.exists().then_some(default));
    order::main_with_config(file.as_deref()).await
}
