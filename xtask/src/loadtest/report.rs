//! Medians and tables. Tables are Markdown with aligned columns: readable in
//! a terminal and pasted as they are into docs/performance.md.

use std::fmt::Write as _;

/// The median of `xs` (NaN for none); NaNs are ignored.
pub fn median(xs: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `12 345` (thin grouping, as docs/performance.md writes numbers).
pub fn int(x: f64) -> String {
    if x.is_nan() {
        return "—".into();
    }
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// One decimal below 100, whole numbers above.
pub fn num(x: f64) -> String {
    if x.is_nan() {
        "—".into()
    } else if x.abs() < 100.0 {
        format!("{x:.1}")
    } else {
        int(x)
    }
}

/// `0.58×`
pub fn ratio(x: f64) -> String {
    if x.is_nan() || x.is_infinite() {
        "—".into()
    } else {
        format!("{x:.2}×")
    }
}

/// `+12.3` / `-4.0`
pub fn signed(x: f64) -> String {
    if x.is_nan() {
        "—".into()
    } else if x >= 0.0 {
        format!("+{}", num(x))
    } else {
        num(x)
    }
}

/// A Markdown table; the first column is left-aligned, the others right.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut width = vec![0; n];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let parts: Vec<String> = cells
                .iter()
                .zip(&width)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i == 0 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            format!("| {} |", parts.join(" | "))
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", line(&self.header));
        let rule: Vec<String> = width
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let dashes = "-".repeat((*w).max(3));
                if i == 0 {
                    dashes
                } else {
                    format!("{}:", &dashes[1..])
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", rule.join(" | "));
        for r in &self.rows {
            let _ = writeln!(out, "{}", line(r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median([]).is_nan());
        assert_eq!(median([f64::NAN, 5.0]), 5.0);
    }

    #[test]
    fn numbers() {
        assert_eq!(int(125_800.4), "125 800");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(1000.0), "1 000");
        assert_eq!(num(35.84), "35.8");
        assert_eq!(num(2018.0), "2 018");
        assert_eq!(ratio(0.5789), "0.58×");
        assert_eq!(signed(-4.0), "-4.0");
        assert_eq!(signed(12.34), "+12.3");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&["path", "req/s"]);
        t.row(vec!["direct".into(), "125 800".into()]);
        t.row(vec!["(b)".into(), "1".into()]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "| path   |   req/s |");
        assert_eq!(lines[1], "| ------ | ------: |");
        assert_eq!(lines[3], "| (b)    |       1 |");
    }
}
