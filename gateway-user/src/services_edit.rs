//! `ackgate services add|remove`: edits the `[[services]]` of the config
//! file in place (comments and layout kept, toml_edit), refuses an edit
//! that would make the config invalid, and replaces the file atomically.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use toml_edit::{Array, DocumentMut, Item, Table, value};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("no service named {0:?}")]
    NoSuchService(String),
    #[error("the edited config would be invalid: {0}")]
    Invalid(String),
}

/// A service as `services add` takes it.
#[derive(Clone, Debug)]
pub struct NewService {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub target: String,
    pub default_response: String,
    pub stealth: bool,
    pub allow_groups: Vec<String>,
}

fn load(path: &Path) -> Result<DocumentMut, EditError> {
    let file_err = |reason: String| EditError::File { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    text.parse::<DocumentMut>().map_err(|e| file_err(e.to_string()))
}

/// Checks the edited document as a config, then writes it atomically.
fn store(path: &Path, doc: &DocumentMut) -> Result<(), EditError> {
    let text = doc.to_string();
    let config: Config = toml::from_str(&text).map_err(|e| EditError::Invalid(e.to_string()))?;
    config.validate().map_err(|e| EditError::Invalid(e.to_string()))?;
    config.service_entries().map_err(|e| EditError::Invalid(e.to_string()))?;
    let file_err = |e: std::io::Error| EditError::File { path: path.display().to_string(), reason: e.to_string() };
    // The edited file keeps its mode: a config an administrator made
    // private stays private.
    let mode = std::fs::metadata(path).map_err(file_err)?.permissions().mode() & 0o7777;
    ackgate_common::host::replace_file(path, text.as_bytes(), mode).map_err(file_err)
}

pub fn add(path: &Path, s: &NewService) -> Result<(), EditError> {
    let mut doc = load(path)?;
    let mut t = Table::new();
    t["name"] = value(s.name.as_str());
    t["vip"] = value(s.vip.as_str());
    t["port"] = value(i64::from(s.port));
    t["target"] = value(s.target.as_str());
    t["default_response"] = value(s.default_response.as_str());
    t["stealth"] = value(s.stealth);
    let mut groups = Array::new();
    for g in &s.allow_groups {
        groups.push(g.as_str());
    }
    t["allow_groups"] = value(groups);
    let services = doc.entry("services").or_insert(Item::ArrayOfTables(Default::default()));
    let Some(list) = services.as_array_of_tables_mut() else {
        return Err(EditError::Invalid("`services` is not an array of tables".into()));
    };
    if list.iter().any(|e| e.get("name").and_then(|n| n.as_str()) == Some(s.name.as_str())) {
        return Err(EditError::Invalid(format!("a service named {:?} exists", s.name)));
    }
    list.push(t);
    store(path, &doc)
}

pub fn remove(path: &Path, name: &str) -> Result<(), EditError> {
    let mut doc = load(path)?;
    let Some(list) = doc.get_mut("services").and_then(|s| s.as_array_of_tables_mut()) else {
        return Err(EditError::NoSuchService(name.to_owned()));
    };
    let Some(index) = list.iter().position(|e| e.get("name").and_then(|n| n.as_str()) == Some(name)) else {
        return Err(EditError::NoSuchService(name.to_owned()));
    };
    list.remove(index);
    store(path, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_keep_comments_and_refuse_invalid_results() {
        let path = std::env::temp_dir().join(format!("ackgate-svc-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "# my gateway\n[gateway]\nedge_interface = \"eth0\" # the edge\ninternal_interface = \"eth1\"\n",
        )
        .expect("write");
        let web = NewService {
            name: "web".into(),
            vip: "10.0.0.1".into(),
            port: 443,
            target: "10.1.0.2:443".into(),
            default_response: "reset".into(),
            stealth: false,
            allow_groups: vec!["staff".into()],
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        add(&path, &web).expect("add");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "an edit must keep the file's mode, not {mode:o}");
        assert!(matches!(add(&path, &web), Err(EditError::Invalid(_))), "a duplicate name must be refused");
        let bad = NewService { name: "bad".into(), default_response: "bounce".into(), port: 80, ..web.clone() };
        assert!(matches!(add(&path, &bad), Err(EditError::Invalid(_))), "an invalid response must be refused");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("# my gateway") && text.contains("# the edge"), "comments must survive: {text}");
        let config = Config::from_file(&path).expect("still a valid config");
        assert_eq!(config.services.len(), 1);
        remove(&path, "web").expect("remove");
        assert!(matches!(remove(&path, "web"), Err(EditError::NoSuchService(_))));
        assert!(Config::from_file(&path).expect("valid").services.is_empty());
        std::fs::remove_file(&path).expect("cleanup");
    }
}
