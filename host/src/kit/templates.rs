//! `lanes plugins new NAME --lang rust|python|js`: a provider project from the templates
//! in `plugins/templates/`, built into the binary, with lanes' WIT (and for Rust the guest
//! SDK) written beside it so that the project builds on its own.

use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};

static TEMPLATES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../plugins/templates");
static SDK_SOURCES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../plugins/sdk/src");
const PROVIDER_WIT: &str = include_str!("../../../wit/provider.wit");
const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// The languages a provider can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    fn dir(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    /// How to build the project, for the message after it is written.
    pub fn build_hint(self, name: &str) -> String {
        match self {
            Lang::Rust => format!(
                "cargo build --target wasm32-wasip2 --release   # target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ),
            Lang::Python => {
                format!("pip install -r requirements.txt && sh build.sh   # {name}.wasm")
            }
            Lang::Js => format!("npm install && npm run build   # {name}.wasm"),
        }
    }
}

/// Why a project was not written.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error("{0}")]
    BadName(String),
    #[error("{} already exists and is not empty: pick another --dir or remove it", .0.display())]
    Exists(PathBuf),
    #[error("writing {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The pinned toolchain's channel, from `rust-toolchain.toml`.
fn toolchain() -> &'static str {
    TOOLCHAIN
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map_or("stable", |c| c.trim_matches('"'))
}

fn wit_version() -> String {
    let (a, b, c) = crate::plugin::version::HOST_WIT_VERSION;
    format!("{a}.{b}.{c}")
}

fn fill(text: &str, name: &str) -> String {
    text.replace("{{name}}", name)
        .replace("{{crate}}", &name.replace('-', "_"))
        .replace("{{wit_version}}", &wit_version())
        .replace("{{lanes_version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{toolchain}}", toolchain())
}

/// The files of a new project: relative path and contents.
pub fn files(name: &str, lang: Lang) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Some(dir) = TEMPLATES.get_dir(lang.dir()) else {
        return out;
    };
    collect(dir, Path::new(lang.dir()), name, &mut out);
    match lang {
        Lang::Rust => {
            out.push(("wit/provider.wit".into(), PROVIDER_WIT.to_string()));
            for file in SDK_SOURCES.files() {
                if let Some(text) = file.contents_utf8() {
                    out.push((
                        Path::new("vendor/lanes-guest/src").join(file.path()),
                        text.to_string(),
                    ));
                }
            }
        }
        Lang::Python => out.push((
            "wit/deps/lanes-provider/provider.wit".into(),
            PROVIDER_WIT.to_string(),
        )),
        Lang::Js => out.push(("wit/provider.wit".into(), PROVIDER_WIT.to_string())),
    }
    out.sort();
    out
}

fn collect(dir: &Dir<'_>, root: &Path, name: &str, out: &mut Vec<(PathBuf, String)>) {
    for file in dir.files() {
        if let (Ok(relative), Some(text)) = (file.path().strip_prefix(root), file.contents_utf8()) {
            out.push((relative.to_path_buf(), fill(text, name)));
        }
    }
    for sub in dir.dirs() {
        collect(sub, root, name, out);
    }
}

/// Writes a new project for provider `name` into `dir` (which must not exist or be empty)
/// and returns the files written.
pub fn create(name: &str, lang: Lang, dir: &Path) -> Result<Vec<PathBuf>, NewError> {
    crate::model::validate_provider_name(name).map_err(NewError::BadName)?;
    if dir.exists() && std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_some()) {
        return Err(NewError::Exists(dir.to_path_buf()));
    }
    let mut written = Vec::new();
    for (relative, text) in files(name, lang) {
        let path = dir.join(&relative);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)
        };
        write().map_err(|source| NewError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(relative);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_complete_and_filled() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let files = files("my-llm", lang);
            assert!(files.len() > 3, "{lang:?}: {} files", files.len());
            for (path, text) in &files {
                assert!(
                    !text.contains("{{"),
                    "{lang:?} {}: a placeholder is left",
                    path.display()
                );
            }
        }
        let rust = files("my-llm", Lang::Rust);
        let has = |p: &str| rust.iter().any(|(path, _)| path == Path::new(p));
        assert!(has("Cargo.toml") && has("src/lib.rs") && has("wit/provider.wit"));
        assert!(has("vendor/lanes-guest/Cargo.toml") && has("vendor/lanes-guest/src/lib.rs"));
        assert!(toolchain().starts_with("1."), "{}", toolchain());
    }

    /// The vendored SDK's manifest must ask for what the SDK itself depends on.
    #[test]
    fn the_vendored_sdk_has_the_sdk_dependencies() {
        let sdk: toml::Table =
            toml::from_str(include_str!("../../../plugins/sdk/Cargo.toml")).unwrap();
        let vendored: toml::Table = toml::from_str(&fill(
            include_str!("../../../plugins/templates/rust/vendor/lanes-guest/Cargo.toml"),
            "x",
        ))
        .unwrap();
        assert_eq!(sdk["dependencies"], vendored["dependencies"]);
    }

    #[test]
    fn a_project_is_not_written_over_another() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), "x").unwrap();
        assert!(matches!(
            create("ok", Lang::Js, dir.path()),
            Err(NewError::Exists(_))
        ));
        assert!(matches!(
            create("Bad Name", Lang::Js, &dir.path().join("new")),
            Err(NewError::BadName(_))
        ));
    }
}
