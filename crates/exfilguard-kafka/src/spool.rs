//! An ordered on-disk log between the agent and the broker. Every record is appended here first;
//! the sender reads from a committed cursor and advances it only after the broker acknowledged
//! (acks=all), so a dead broker or an agent restart loses nothing and records leave in order.
//! Disk use is bounded: past `max_bytes` the oldest segment is dropped and counted.
//!
//! Layout: `DIR/<seq>.log` segments of `key\tvalue\n` lines (an empty value is a tombstone;
//! keys and JSON values never hold raw tabs or newlines), `DIR/cursor` = "seq offset".

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool record key {0:?} holds a tab or newline")]
    BadKey(String),
}

type Result<T> = std::result::Result<T, SpoolError>;

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A position in the spool: segment number and byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub seq: u64,
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    /// `None`: a tombstone (Kafka record with a null value).
    pub value: Option<String>,
    /// Where the next record starts: commit this once the record is delivered.
    pub next: Pos,
}

struct State {
    writer: File,
    write_seq: u64,
    write_size: u64,
    cursor: Pos,
    /// Bytes of every segment file (the sent part of the oldest included until it is removed).
    total: u64,
    dropped: u64,
}

pub struct Spool {
    dir: PathBuf,
    segment_bytes: u64,
    max_bytes: u64,
    st: Mutex<State>,
}

fn seg_name(seq: u64) -> String {
    format!("{seq:016}.log")
}

fn segments(dir: &Path) -> Result<Vec<u64>> {
    let mut v: Vec<u64> = io(dir, std::fs::read_dir(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

impl Spool {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self> {
        io(dir, std::fs::create_dir_all(dir))?;
        let segs = segments(dir)?;
        let cursor = std::fs::read_to_string(dir.join("cursor"))
            .ok()
            .and_then(|t| {
                let mut it = t.split_whitespace().map(|x| x.parse::<u64>());
                Some(Pos {
                    seq: it.next()?.ok()?,
                    offset: it.next()?.ok()?,
                })
            })
            .unwrap_or(Pos {
                seq: segs.first().copied().unwrap_or(1),
                offset: 0,
            });
        let write_seq = segs.last().copied().unwrap_or(1).max(cursor.seq);
        let path = dir.join(seg_name(write_seq));
        let writer = io(
            &path,
            OpenOptions::new().create(true).append(true).open(&path),
        )?;
        let write_size = io(&path, writer.metadata())?.len();
        let mut total = 0;
        for s in segments(dir)? {
            let p = dir.join(seg_name(s));
            total += io(&p, std::fs::metadata(&p))?.len();
        }
        let segment_bytes = (max_bytes / 8).clamp(64 * 1024, 16 << 20);
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            max_bytes: max_bytes.max(2 * segment_bytes),
            st: Mutex::new(State {
                writer,
                write_seq,
                write_size,
                cursor,
                total,
                dropped: 0,
            }),
        })
    }

    /// Appends records in order (value `None` = tombstone).
    pub fn append<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<()> {
        let mut buf = Vec::new();
        for (k, v) in records {
            if k.contains(['\t', '\n']) {
                return Err(SpoolError::BadKey(k.to_string()));
            }
            buf.extend_from_slice(k.as_bytes());
            buf.push(b'\t');
            if let Some(v) = v {
                // JSON never holds a raw newline; anything else is made safe rather than lost
                buf.extend(v.bytes().map(|b| if b == b'\n' { b' ' } else { b }));
            }
            buf.push(b'\n');
        }
        if buf.is_empty() {
            return Ok(());
        }
        let mut st = self.st.lock().expect("spool lock");
        if st.write_size > 0 && st.write_size + buf.len() as u64 > self.segment_bytes {
            st.write_seq += 1;
            let p = self.dir.join(seg_name(st.write_seq));
            st.writer = io(&p, OpenOptions::new().create(true).append(true).open(&p))?;
            st.write_size = 0;
        }
        let p = self.dir.join(seg_name(st.write_seq));
        io(&p, st.writer.write_all(&buf))?;
        st.write_size += buf.len() as u64;
        st.total += buf.len() as u64;
        self.enforce_cap(&mut st)?;
        Ok(())
    }

    /// Drops the oldest segments (sent or not) until the spool fits its cap.
    fn enforce_cap(&self, st: &mut State) -> Result<()> {
        while st.total > self.max_bytes {
            let segs = segments(&self.dir)?;
            let Some(&oldest) = segs.first().filter(|&&s| s < st.write_seq) else {
                break;
            };
            let p = self.dir.join(seg_name(oldest));
            let len = io(&p, std::fs::metadata(&p))?.len();
            if oldest >= st.cursor.seq {
                let from = if oldest == st.cursor.seq {
                    st.cursor.offset
                } else {
                    0
                };
                let lost = count_lines(&p, from)?;
                st.dropped += lost;
                tracing::warn!(
                    records = lost,
                    "event spool over its cap: oldest undelivered segment dropped"
                );
                st.cursor = Pos {
                    seq: oldest + 1,
                    offset: 0,
                };
                self.write_cursor(st.cursor)?;
            }
            io(&p, std::fs::remove_file(&p))?;
            st.total -= len;
        }
        Ok(())
    }

    /// Up to `max` undelivered records from the cursor, oldest first.
    pub fn peek(&self, max: usize) -> Result<Vec<Record>> {
        let (mut pos, write_seq) = {
            let st = self.st.lock().expect("spool lock");
            (st.cursor, st.write_seq)
        };
        let mut out = Vec::new();
        while out.len() < max && pos.seq <= write_seq {
            let p = self.dir.join(seg_name(pos.seq));
            let f = match File::open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    pos = Pos {
                        seq: pos.seq + 1,
                        offset: 0,
                    };
                    continue;
                }
                Err(e) => return io(&p, Err(e)),
            };
            let mut r = BufReader::new(f);
            io(&p, r.seek(SeekFrom::Start(pos.offset)))?;
            let mut line = Vec::new();
            loop {
                if out.len() >= max {
                    break;
                }
                line.clear();
                let n = io(&p, r.read_until(b'\n', &mut line))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break; // end of segment, or a line still being written
                }
                pos.offset += n as u64;
                let text = String::from_utf8_lossy(&line[..n - 1]);
                let (k, v) = text.split_once('\t').unwrap_or((&text, ""));
                out.push(Record {
                    key: k.to_string(),
                    value: (!v.is_empty()).then(|| v.to_string()),
                    next: pos,
                });
            }
            if out.len() >= max || pos.seq == write_seq {
                break;
            }
            pos = Pos {
                seq: pos.seq + 1,
                offset: 0,
            };
        }
        Ok(out)
    }

    /// Marks everything before `pos` delivered; removes fully delivered segments.
    pub fn commit(&self, pos: Pos) -> Result<()> {
        let mut st = self.st.lock().expect("spool lock");
        if pos <= st.cursor {
            return Ok(()); // the cap moved past it meanwhile
        }
        st.cursor = pos;
        self.write_cursor(pos)?;
        for s in segments(&self.dir)? {
            if s < pos.seq && s < st.write_seq {
                let p = self.dir.join(seg_name(s));
                let len = io(&p, std::fs::metadata(&p))?.len();
                io(&p, std::fs::remove_file(&p))?;
                st.total -= len;
            }
        }
        Ok(())
    }

    fn write_cursor(&self, pos: Pos) -> Result<()> {
        let tmp = self.dir.join("cursor.tmp");
        io(
            &tmp,
            std::fs::write(&tmp, format!("{} {}\n", pos.seq, pos.offset)),
        )?;
        let dst = self.dir.join("cursor");
        io(&dst, std::fs::rename(&tmp, &dst))
    }

    /// Bytes not yet delivered (approximate: whole segments from the cursor's).
    pub fn pending_bytes(&self) -> u64 {
        let st = self.st.lock().expect("spool lock");
        let mut n = 0;
        for s in st.cursor.seq..=st.write_seq {
            if let Ok(m) = std::fs::metadata(self.dir.join(seg_name(s))) {
                n += m.len();
            }
        }
        n.saturating_sub(st.cursor.offset)
    }

    /// Records lost to the cap since open.
    pub fn dropped(&self) -> u64 {
        self.st.lock().expect("spool lock").dropped
    }
}

fn count_lines(p: &Path, from: u64) -> Result<u64> {
    let mut f = io(p, File::open(p))?;
    io(p, f.seek(SeekFrom::Start(from)))?;
    let mut n = 0;
    for line in BufReader::new(f).split(b'\n') {
        io(p, line)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &Spool) -> Vec<String> {
        let mut all = Vec::new();
        loop {
            let batch = s.peek(7).unwrap();
            let Some(last) = batch.last() else { break };
            s.commit(last.next).unwrap();
            all.extend(batch.into_iter().map(|r| r.value.unwrap_or_default()));
        }
        all
    }

    #[test]
    fn delivers_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let vals: Vec<String> = (0..5000).map(|i| format!("{{\"i\":{i}}}")).collect();
        {
            let s = Spool::open(dir.path(), 1 << 20).unwrap();
            for v in &vals[..3000] {
                s.append([("h", Some(v.as_str()))]).unwrap();
            }
            // deliver a part, then "crash"
            let b = s.peek(1000).unwrap();
            s.commit(b.last().unwrap().next).unwrap();
        }
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        for v in &vals[3000..] {
            s.append([("h", Some(v.as_str()))]).unwrap();
        }
        assert_eq!(drain(&s), vals[1000..].to_vec());
        assert_eq!(s.pending_bytes(), 0);
        assert_eq!(s.dropped(), 0);
    }

    #[test]
    fn tombstones_and_uncommitted_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append([("evil.com", Some("{}")), ("evil.com", None)])
            .unwrap();
        let b = s.peek(10).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].value, None);
        drop(s);
        // nothing committed: a restart sends both again
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.peek(10).unwrap().len(), 2);
        assert!(s.append([("a\tb", Some("x"))]).is_err());
    }

    #[test]
    fn cap_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 256 * 1024).unwrap();
        let v = "x".repeat(1000);
        for _ in 0..1000 {
            s.append([("k", Some(v.as_str()))]).unwrap();
        }
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 256 * 1024 + 64 * 1024, "{on_disk}");
        let left = drain(&s).len() as u64;
        assert_eq!(left + s.dropped(), 1000);
        assert!(s.dropped() > 0);
    }
}
