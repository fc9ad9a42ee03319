//! How verdicts look in a terminal, shared by `classify`, `scan` and `replay`: tables from
//! comfy-table with fixed column widths (rows stream out in batches, and every batch lines up
//! with the header), names cut on the left so the registered domain stays readable, and the
//! detector's risk with its probability against the threshold in use.

use comfy_table::{CellAlignment, ColumnConstraint, ContentArrangement, Table, Width};
use exfilguard_detect::verdict::fmt_vs;
use exfilguard_detect::Verdict;

/// A name cut on the left to `width` characters: `...t.example.org` keeps the domain.
pub fn cut_left(name: &str, width: usize) -> String {
    let n = name.chars().count();
    if n <= width || width < 4 {
        return name.to_owned();
    }
    let tail: String = name.chars().skip(n - (width - 3)).collect();
    format!("...{tail}")
}

/// The detector closest to its threshold: ("tunnel 97 high", "0.999 < 0.999991"). A bare
/// "benign 0.997" reads as a near miss when the DGA threshold is 0.998422.
pub fn risk(v: &Verdict) -> (String, String) {
    let top = v
        .detectors
        .iter()
        .max_by(|a, b| a.risk.cmp(&b.risk).then(a.p.total_cmp(&b.p)));
    match top {
        Some(d) => {
            let (p, t) = fmt_vs(d.p, d.threshold);
            (
                format!("{} {} {}", d.detector.as_str(), d.risk, d.level.as_str()),
                format!("{p} {} {t}", if d.p >= d.threshold { ">=" } else { "<" }),
            )
        }
        None => ("-".into(), format!("{:.3}", v.score)),
    }
}

/// Rows printed batch by batch under one header: each column has a fixed width (`0`: as wide
/// as its content, for the last column), so batches line up.
pub struct Rows {
    columns: Vec<(&'static str, usize, bool)>,
    header_done: bool,
}

impl Rows {
    /// `(title, width, right-aligned)` per column.
    pub fn new(columns: Vec<(&'static str, usize, bool)>) -> Self {
        Self {
            columns,
            header_done: false,
        }
    }

    /// The batch as text (with the header the first time); rows are cut to the widths.
    pub fn render(&mut self, rows: Vec<Vec<String>>) -> String {
        let mut t = Table::new();
        t.load_preset(comfy_table::presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled);
        if !self.header_done {
            t.set_header(self.columns.iter().map(|c| c.0));
            self.header_done = true;
        }
        for r in rows {
            t.add_row(
                r.into_iter()
                    .zip(&self.columns)
                    .map(|(cell, &(_, w, _))| {
                        if w > 0 && cell.chars().count() > w {
                            cut_left(&cell, w)
                        } else {
                            cell
                        }
                    })
                    .collect::<Vec<_>>(),
            );
        }
        t.set_constraints(self.columns.iter().map(|&(_, w, _)| {
            if w > 0 {
                ColumnConstraint::Absolute(Width::Fixed(w as u16 + 2))
            } else {
                ColumnConstraint::ContentWidth
            }
        }));
        for (i, c) in self.columns.iter().enumerate() {
            if c.2 {
                if let Some(col) = t.column_mut(i) {
                    col.set_cell_alignment(CellAlignment::Right);
                }
            }
        }
        if t.row_count() == 0 && t.header().is_none() {
            return String::new();
        }
        let mut s: String = t
            .lines()
            // the preset pads every cell by one space: no margin before the first column
            .map(|l| l.strip_prefix(' ').unwrap_or(&l).trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n");
        s.push('\n');
        s
    }
}

/// A whole table at once (summaries), same look.
pub fn table(columns: Vec<(&'static str, usize, bool)>, rows: Vec<Vec<String>>) -> String {
    Rows::new(columns).render(rows)
}
