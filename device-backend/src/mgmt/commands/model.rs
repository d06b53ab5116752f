//! The drive timing model at run time: `drive-model-set`,
//! `drive-model-off` and `query-drive-model`. The model is the
//! controller's (`controller::timing`); these commands only parse what the
//! command line parses (`--drive-model FILE`'s TOML, or the
//! `--service-latency/-bandwidth/-units` shorthand) and swap it in.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use vsic_abi::units::{parse_duration, parse_size};

use crate::controller::{DriveModel, Latency, Placement, ServiceModel, MAX_UNITS};
use crate::mgmt::protocol::CommandError;
use crate::mgmt::registry::{args, no_args, Context, Registry};

pub fn register(r: &mut Registry) {
    r.add(
        "drive-model-set",
        "replace the drive timing model: {\"toml\": TEXT} (a --drive-model file's text) or \
         {\"latency\": \"50us\", \"bandwidth\": \"500M\", \"units\": 8} (the --service-* \
         options); requests served from now on use it",
        set,
    );
    r.add(
        "drive-model-off",
        "turn the drive timing model off: requests complete as soon as their data moved",
        off,
    );
    r.add(
        "query-drive-model",
        "the drive timing model in force (per drive), or that it is off",
        query,
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetArgs {
    toml: Option<String>,
    latency: Option<String>,
    bandwidth: Option<String>,
    units: Option<u32>,
}

/// The model `a` describes, checked against a controller of `drives`
/// drives.
fn model_of(a: SetArgs, drives: usize) -> Result<ServiceModel, CommandError> {
    let shorthand = a.latency.is_some() || a.bandwidth.is_some() || a.units.is_some();
    let model = match (a.toml, shorthand) {
        (Some(_), true) => {
            return Err(CommandError::invalid(
                "toml goes alone: not with latency, bandwidth or units",
            ))
        }
        (None, false) => {
            return Err(CommandError::invalid(
                "give toml, or at least one of latency, bandwidth and units \
                 (drive-model-off turns the model off)",
            ))
        }
        (Some(text), false) => {
            ServiceModel::parse(&text).map_err(|e| CommandError::invalid(e.to_string()))?
        }
        (None, true) => {
            let latency = match a.latency {
                Some(t) => parse_duration(&t)
                    .map_err(|e| CommandError::invalid(format!("latency: {e}")))?,
                None => Default::default(),
            };
            let bandwidth = match a.bandwidth {
                Some(t) => {
                    parse_size(&t).map_err(|e| CommandError::invalid(format!("bandwidth: {e}")))?
                }
                None => 0,
            };
            let units = a.units.unwrap_or(1);
            if !(1..=MAX_UNITS).contains(&units) {
                return Err(CommandError::invalid(format!(
                    "units: {units}: must be 1 to {MAX_UNITS}"
                )));
            }
            ServiceModel::uniform(DriveModel::fixed(latency, bandwidth, units))
        }
    };
    if let Some((&d, _)) = model.drives.range(drives..).next() {
        return Err(CommandError::invalid(format!(
            "[drives.{d}]: this controller has {drives} drive(s), numbered from 0"
        )));
    }
    Ok(model)
}

fn set(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    let drives = ctx.controller.config().drives.len();
    let model = model_of(args(a)?, drives)?;
    ctx.controller.set_service_model(Some(model));
    Ok(describe(ctx))
}

fn off(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    no_args(a)?;
    ctx.controller.set_service_model(None);
    Ok(describe(ctx))
}

fn query(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    no_args(a)?;
    Ok(describe(ctx))
}

/// `{"on": false}` or `{"on": true, "drives": [per drive]}`.
fn describe(ctx: &Context) -> Value {
    match ctx.controller.service_model() {
        None => json!({"on": false}),
        Some(m) => {
            let drives: Vec<Value> = (0..ctx.controller.config().drives.len())
                .map(|d| drive_json(m.for_drive(d)))
                .collect();
            json!({"on": true, "drives": drives})
        }
    }
}

fn us(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn latency_json(l: &Latency) -> Value {
    match l {
        Latency::Fixed(d) => json!({"fixed-us": us(*d)}),
        Latency::Uniform { mean, jitter } => {
            json!({"mean-us": us(*mean), "jitter-us": us(*jitter)})
        }
        Latency::Table(points) => json!({
            "percentiles": points.iter().map(|&(p, d)| json!({"p": p, "us": us(d)})).collect::<Vec<_>>()
        }),
    }
}

fn drive_json(m: &DriveModel) -> Value {
    let mut o = Map::new();
    o.insert("units".into(), json!(m.units));
    o.insert(
        "placement".into(),
        match m.placement {
            Placement::LeastBusy => json!("least-busy"),
            Placement::Stripe { bytes } => json!({"stripe-bytes": bytes}),
        },
    );
    o.insert("unit-bandwidth".into(), json!(m.unit_bandwidth));
    o.insert("link-bandwidth".into(), json!(m.link_bandwidth));
    o.insert("read".into(), latency_json(&m.read));
    o.insert("write".into(), latency_json(&m.write));
    o.insert("flush".into(), latency_json(&m.flush));
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_args(v: Value) -> SetArgs {
        serde_json::from_value(v).expect("arguments")
    }

    #[test]
    fn shorthand_and_toml_build_the_model_the_command_line_would() {
        let m = model_of(
            set_args(json!({"latency": "50us", "bandwidth": "1M", "units": 4})),
            2,
        )
        .expect("shorthand");
        assert_eq!(
            m,
            ServiceModel::uniform(DriveModel::fixed(
                std::time::Duration::from_micros(50),
                1 << 20,
                4
            ))
        );
        let text = "[model]\nunits = 2\nread = { latency = \"20us\" }\n[drives.1]\nunits = 8\n";
        let m = model_of(set_args(json!({ "toml": text })), 2).expect("toml");
        assert_eq!(m, ServiceModel::parse(text).expect("parse"));
        assert_eq!(m.for_drive(1).units, 8);
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        for (a, want) in [
            (json!({}), "give toml"),
            (json!({"toml": "[model]\n", "units": 2}), "toml goes alone"),
            (json!({"units": 0}), "units: 0"),
            (json!({"units": MAX_UNITS + 1}), "must be 1 to"),
            (json!({"latency": "soon"}), "latency:"),
            (json!({"bandwidth": "fast"}), "bandwidth:"),
            (json!({"toml": "not toml ["}), ""),
            (
                json!({"toml": "[model]\nunits = 2\n[drives.2]\nunits = 1\n"}),
                "[drives.2]",
            ),
        ] {
            let e = model_of(set_args(a.clone()), 2).expect_err(&a.to_string());
            assert!(e.desc.contains(want), "{a}: {}", e.desc);
        }
    }
}
