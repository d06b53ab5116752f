//! The in-memory index: every live key and its value, rebuilt from the log
//! at start. Ordered by (hash of the key, key) so that SCAN can hand out a
//! cursor (a hash value) that stays valid while keys come and go: every key
//! present for the whole scan is returned.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::ops::Bound;

use crate::layout::LogOp;

#[derive(Debug, Default)]
pub struct Index {
    map: BTreeMap<(u64, Vec<u8>), Vec<u8>>,
    /// Bytes of keys and values, for the compaction trigger and INFO.
    bytes: u64,
}

/// Never 0: cursor 0 starts and ends a SCAN.
pub fn key_hash(key: &[u8]) -> u64 {
    // SipHash with fixed keys: the same order in every run.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    key.hash(&mut h);
    h.finish().max(1)
}

impl Index {
    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.map.get(&(key_hash(key), key.to_vec()))
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn apply(&mut self, op: LogOp) {
        match op {
            LogOp::Set(k, v) => {
                self.bytes += (k.len() + v.len()) as u64;
                if let Some(old) = self.map.insert((key_hash(&k), k.clone()), v) {
                    self.bytes -= (k.len() + old.len()) as u64;
                }
            }
            LogOp::Del(k) => {
                if let Some(old) = self.map.remove(&(key_hash(&k), k.clone())) {
                    self.bytes -= (k.len() + old.len()) as u64;
                }
            }
            LogOp::Clear => {
                self.map.clear();
                self.bytes = 0;
            }
        }
    }

    /// Every (key, value), in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.map.iter().map(|((_, k), v)| (k, v))
    }

    /// Keys matching the glob `pattern`.
    pub fn keys(&self, pattern: &[u8]) -> Vec<Vec<u8>> {
        self.map
            .keys()
            .filter(|(_, k)| glob_match(pattern, k))
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// One SCAN step: about `count` keys from `cursor` on (whole hash
    /// buckets), filtered by `pattern`, and the next cursor (0 at the end).
    pub fn scan(&self, cursor: u64, count: usize, pattern: Option<&[u8]>) -> (u64, Vec<Vec<u8>>) {
        let mut out = Vec::new();
        let mut last_hash = None;
        let from = (Bound::Included((cursor, Vec::new())), Bound::Unbounded);
        for (visited, ((h, k), _)) in self.map.range(from).enumerate() {
            if visited >= count.max(1) && last_hash != Some(*h) {
                return (*h, out);
            }
            last_hash = Some(*h);
            let wanted = match pattern {
                None => true,
                Some(p) => glob_match(p, k),
            };
            if wanted {
                out.push(k.clone());
            }
        }
        (0, out)
    }
}

/// Redis-style glob: `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    // Backtracking point for the last `*`: (pattern after it, string pos).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, i));
                    p += 1;
                    continue;
                }
                b'?' if i < s.len() => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' if i < s.len() => {
                    if let Some((matched, next)) = class_match(pattern, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() && i < s.len() && pattern[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                c if c != b'*'
                    && c != b'?'
                    && c != b'['
                    && c != b'\\'
                    && i < s.len()
                    && c == s[i] =>
                {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'\\' if p + 1 == pattern.len() && i < s.len() && s[i] == b'\\' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        } else if i == s.len() {
            return true;
        }
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// Matches `c` against the class starting at `pattern[p] == b'['`;
/// returns (matched, index after the class), None if unterminated.
fn class_match(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    while j < pattern.len() && pattern[j] != b']' {
        if pattern[j] == b'\\' && j + 1 < pattern.len() {
            matched |= pattern[j + 1] == c;
            j += 2;
        } else if j + 2 < pattern.len() && pattern[j + 1] == b'-' && pattern[j + 2] != b']' {
            let (lo, hi) = (
                pattern[j].min(pattern[j + 2]),
                pattern[j].max(pattern[j + 2]),
            );
            matched |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            matched |= pattern[j] == c;
            j += 1;
        }
    }
    if j >= pattern.len() {
        return None;
    }
    Some((matched != negate, j + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
        assert!(m("*", "anything"));
        assert!(m("k*", "k12"));
        assert!(!m("k*", "x12"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-c]llo", "hbllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!m("*a*b", "xxaxxbxx"));
        assert!(m("", ""));
        assert!(!m("", "a"));
    }

    #[test]
    fn scan_visits_every_key_once_across_cursors() {
        let mut ix = Index::default();
        for i in 0..1000 {
            ix.apply(LogOp::Set(format!("key:{i}").into_bytes(), b"v".to_vec()));
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        let mut steps = 0;
        loop {
            let (next, keys) = ix.scan(cursor, 10, None);
            for k in keys {
                assert!(seen.insert(k), "duplicate");
            }
            steps += 1;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(seen.len(), 1000);
        assert!(steps >= 100);
        ix.apply(LogOp::Del(b"key:5".to_vec()));
        assert_eq!(ix.len(), 999);
        assert_eq!(ix.keys(b"key:5*").len(), 110, "key:5x and key:5xx");
        ix.apply(LogOp::Clear);
        assert_eq!((ix.len(), ix.bytes()), (0, 0));
    }
}
