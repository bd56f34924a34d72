//! Turns `shared/data/dvhc-2025.json` (Vietnam's administrative units after the 2025
//! reorganisation) into catalog fields and entries: one entry per province and per ward/commune,
//! each ward pointing at its province.

use serde::Deserialize;
use serde_json::{json, Map};

use super::model::{CatalogEntry, CatalogField};

#[derive(Deserialize)]
struct Dvhc {
    provinces: Vec<Province>,
}

#[derive(Deserialize)]
struct Province {
    code: u32,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    wards: Vec<Ward>,
}

#[derive(Deserialize)]
struct Ward {
    code: u32,
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

/// Catalog fields and entries from the DVHC JSON document.
pub fn from_json(text: &str) -> Result<(Vec<CatalogField>, Vec<CatalogEntry>), String> {
    let d: Dvhc = serde_json::from_str(text).map_err(|e| format!("not a DVHC document: {e}"))?;
    let field = |n: &str, t: &str, d: &str| CatalogField { name: n.into(), field_type: t.into(), description: d.into() };
    let fields = vec![
        field("code", "string", "GSO code (mã đơn vị hành chính)"),
        field("name", "string", "Tên đơn vị"),
        field("type", "string", "Loại đơn vị"),
        field("level", "integer", "1 = tỉnh/thành phố, 2 = xã/phường/đặc khu"),
        field("parent_code", "string", "Mã tỉnh/thành phố (cấp 2)"),
    ];
    let mut entries = Vec::new();
    for p in &d.provinces {
        let pc = format!("{:02}", p.code);
        let mut e = Map::new();
        e.insert("code".into(), json!(pc));
        e.insert("name".into(), json!(p.name));
        e.insert("type".into(), json!(p.kind));
        e.insert("level".into(), json!(1));
        entries.push(e);
        for w in &p.wards {
            let mut e = Map::new();
            e.insert("code".into(), json!(format!("{:05}", w.code)));
            e.insert("name".into(), json!(w.name));
            e.insert("type".into(), json!(w.kind));
            e.insert("level".into(), json!(2));
            e.insert("parent_code".into(), json!(pc));
            entries.push(e);
        }
    }
    Ok((fields, entries))
}
