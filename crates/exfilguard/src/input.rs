//! Opening what `scan` and `replay` read: a file or `-` (stdin), gzip-compressed or not
//! (recognised by its magic bytes, not its name).

use anyhow::{Context, Result};
use std::io::BufRead;
use std::path::Path;

/// `path`, or stdin for `-`, with gzip (one or several members) undone.
pub fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let raw: Box<dyn std::io::Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    let mut plain = std::io::BufReader::new(raw);
    let gz = plain
        .fill_buf()
        .with_context(|| format!("reading {}", path.display()))?
        .starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(std::io::BufReader::new(
            flate2::bufread::MultiGzDecoder::new(plain),
        ))
    } else {
        Box::new(plain)
    })
}
