use anyhow::Result;
use exfilguard_detect::Detector;
#[derive(clap::Args)]
pub struct ScanArgs {}
pub fn run(_d: &Detector, _a: &ScanArgs) -> Result<()> { todo!() }
