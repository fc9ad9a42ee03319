//! A JSON-lines file that rotates by size (`events.jsonl` → `events.jsonl.1` … `.KEEP`), so a
//! flood of events can fill at most `max_bytes × (keep + 1)` of disk.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct JsonlFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    out: BufWriter<File>,
    size: u64,
}

impl JsonlFile {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep,
            out: BufWriter::new(file),
            size,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.keep == 0 {
            // no history kept: start the file over
            let file = File::create(&self.path)?;
            self.out = BufWriter::new(file);
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }

    /// Appends one line (a newline is added).
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let n = line.len() as u64 + 1;
        if self.size > 0 && self.size + n > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.size += n;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ev.jsonl");
        let mut f = JsonlFile::open(&p, 100, 2).unwrap();
        for i in 0..30 {
            f.write_line(&format!("{{\"n\":{i:04}}}")).unwrap(); // 11 bytes + newline
        }
        f.flush().unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let cur = read(p.clone());
        let one = read(dir.path().join("ev.jsonl.1"));
        let two = read(dir.path().join("ev.jsonl.2"));
        assert!(!dir.path().join("ev.jsonl.3").exists());
        for text in [&cur, &one, &two] {
            assert!(text.len() <= 100, "{} bytes", text.len());
        }
        // newest lines are in the current file, in order, nothing lost within the kept window
        let all: Vec<String> = [two, one, cur]
            .iter()
            .flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>())
            .collect();
        assert_eq!(all.last().unwrap(), "{\"n\":0029}");
        let nums: Vec<u32> = all.iter().map(|l| l[5..9].parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    }

    #[test]
    fn reopen_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/ev.jsonl");
        JsonlFile::open(&p, 1000, 1)
            .unwrap()
            .write_line("a")
            .unwrap();
        let mut f = JsonlFile::open(&p, 1000, 1).unwrap();
        f.write_line("b").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
    }
}
