//! The user's seed documents (`shared/seeds/*.md`, beside the repository
//! in every checkout and in CI) and the examples in them, so that tests
//! run the seeds' own command lines, config blocks and queries rather than
//! copies that could drift.

use std::path::{Path, PathBuf};

/// Where the seeds are: `$EMPATH_SEEDS_DIR`, else the first `shared/seeds`
/// in a directory above this crate.
pub fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMPATH_SEEDS_DIR") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join("shared/seeds"))
        .find(|dir| dir.join("DEPLOYMENT.md").is_file())
        .unwrap_or_else(|| {
            panic!(
                "the seed documents are not in a shared/seeds above {}; \
                 set EMPATH_SEEDS_DIR to their directory",
                manifest.display()
            )
        })
}

/// One seed document's text.
pub fn read(name: &str) -> String {
    let path = dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A code block of a seed document.
#[derive(Debug, Clone)]
pub struct Block {
    pub file: String,
    /// The line of the opening fence (1-based).
    pub line: usize,
    pub text: String,
}

impl Block {
    pub fn origin(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// The seed documents, by name.
fn documents() -> Vec<(String, String)> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .expect("list the seeds")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let text = read(&name);
            (name, text)
        })
        .collect()
}

/// Every fenced block tagged `lang` (```` ```ron ````), from every seed,
/// with its indentation removed.
pub fn fenced_blocks(lang: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    for (file, text) in documents() {
        let mut open: Option<(usize, usize, Vec<&str>)> = None;
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            match &mut open {
                None => {
                    if trimmed.strip_prefix("```") == Some(lang) {
                        open = Some((index + 1, line.len() - trimmed.len(), Vec::new()));
                    }
                }
                Some((start, indent, lines)) => {
                    if trimmed.starts_with("```") {
                        blocks.push(Block {
                            file: file.clone(),
                            line: *start,
                            text: lines.join("\n"),
                        });
                        open = None;
                    } else {
                        let cut = line
                            .char_indices()
                            .take_while(|(i, c)| *i < *indent && c.is_whitespace())
                            .count();
                        lines.push(&line[cut..]);
                    }
                }
            }
        }
    }
    blocks
}

/// The config files embedded in YAML (a Kubernetes ConfigMap's
/// `empath.config.ron: |`), with their indentation removed.
pub fn yaml_embedded_configs() -> Vec<Block> {
    let mut blocks = Vec::new();
    for block in fenced_blocks("yaml") {
        let lines: Vec<&str> = block.text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let Some(key_at) = line.find("empath.config.ron: |") else {
                continue;
            };
            let body: Vec<&str> = lines[index + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent_of(l) > key_at)
                .copied()
                .collect();
            let indent = body
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| indent_of(l))
                .min()
                .unwrap_or(0);
            let text: Vec<&str> = body.iter().map(|l| l.get(indent..).unwrap_or("")).collect();
            blocks.push(Block {
                file: block.file.clone(),
                line: block.line + index + 1,
                text: text.join("\n"),
            });
        }
    }
    blocks
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The first line in the seed `name` that contains `needle`, trimmed.
pub fn line_containing(name: &str, needle: &str) -> String {
    read(name)
        .lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in {name}"))
        .trim()
        .to_owned()
}
