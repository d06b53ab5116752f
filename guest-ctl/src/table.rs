//! Aligned text tables for human output.

/// A table whose columns are padded to their widest cell. Numeric columns
/// (every cell parses as a number) are right-aligned.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let cell = |row: &Vec<String>, c: usize| row.get(c).cloned().unwrap_or_default();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| cell(r, c).chars().count())
                    .chain(std::iter::once(self.header[c].chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric: Vec<bool> = (0..columns)
            .map(|c| {
                !self.rows.is_empty() && self.rows.iter().all(|r| cell(r, c).parse::<f64>().is_ok())
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(self.rows.iter()) {
            let mut line = String::new();
            for c in 0..columns {
                if c > 0 {
                    line.push_str("  ");
                }
                let text = cell(row, c);
                let pad = " ".repeat(widths[c].saturating_sub(text.chars().count()));
                if numeric[c] {
                    line.push_str(&pad);
                    line.push_str(&text);
                } else {
                    line.push_str(&text);
                    line.push_str(&pad);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key/value lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["7".into(), "a".into()]);
        t.row(vec!["123".into(), "longer".into()]);
        assert_eq!(t.render(), " ID  NAME\n  7  a\n123  longer\n");
    }

    #[test]
    fn short_rows_do_not_panic() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x".into()]);
        assert_eq!(t.render(), "A  B\nx\n");
    }

    #[test]
    fn key_values_align() {
        assert_eq!(
            key_values(&[("a", "1".into()), ("bbb", "2".into())]),
            "a    1\nbbb  2\n"
        );
    }
}
