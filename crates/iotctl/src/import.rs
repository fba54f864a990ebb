//! `iotctl devices import FILE`: many devices from CSV or JSON lines,
//! through device-registry's `CreateDevices` in calls of up to 1000, with a
//! progress bar and a report of every row that was not created.
//!
//! The file is read as a stream: memory stays flat whatever its size. A row
//! that cannot be read (bad CSV or JSON, a field of the wrong type) is
//! reported and never sent; the registry's refusals (invalid, taken, over
//! quota) are reported with the row's line; no row ever costs another.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use iot_proto::v1::{self, CreateDeviceRequest, CreateDevicesRequest};
use serde::Deserialize;

/// What `CreateDevices` takes in one call.
const PER_CALL: usize = 1000;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// CSV with a header row, or JSON lines (one object per line); `-` reads
    /// standard input.
    pub file: PathBuf,
    /// csv or jsonl; by default from the file's extension (.csv, else JSON
    /// lines).
    #[arg(long)]
    pub format: Option<Format>,
    /// The owner of rows that name none (`owner_id`); empty: the nil owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Give every device its own broker account and password (one broker
    /// call per device), written to this CSV file (device_id, username,
    /// password); they are shown nowhere else. Without it the devices have
    /// no account until `iotctl devices rotate` issues one.
    #[arg(long)]
    pub credentials_out: Option<PathBuf>,
    /// Where the report of rows not created goes, as JSON lines (line,
    /// device_id, code, error); default: standard error.
    #[arg(long)]
    pub errors: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

/// One row of the file; the names are CreateDevice's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    device_id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    device_type: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    latitude: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    longitude: Option<String>,
    #[serde(default)]
    owner_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    read_interval: Option<i32>,
    /// JSON: an object in JSON lines, its text in CSV.
    #[serde(default, deserialize_with = "json_text")]
    alert_threshold: Option<String>,
    #[serde(default)]
    data_retention_days: Option<i32>,
    #[serde(default, deserialize_with = "json_text")]
    custom_fields: Option<String>,
}

/// A coordinate as the registry takes it (decimal text), written either way.
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(v) => Some(v.to_string()),
    })
}

/// A JSON field as the registry takes it (JSON text), written as JSON or
/// as its text.
fn json_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(v) => Some(v.to_string()),
    })
}

impl Row {
    fn request(self, owner: &str) -> CreateDeviceRequest {
        let config = (self.read_interval.is_some()
            || self.alert_threshold.is_some()
            || self.data_retention_days.is_some()
            || self.custom_fields.is_some())
        .then(|| v1::DeviceConfig {
            read_interval: self.read_interval.unwrap_or(0),
            alert_threshold_json: self.alert_threshold,
            data_retention_days: self.data_retention_days,
            custom_fields_json: self.custom_fields,
        });
        CreateDeviceRequest {
            name: self.name.unwrap_or_else(|| self.device_id.clone()),
            device_type: self
                .device_type
                .unwrap_or_else(|| "temperature_sensor".into()),
            device_id: self.device_id,
            location: self.location.filter(|l| !l.is_empty()),
            latitude: self.latitude,
            longitude: self.longitude,
            owner_id: self.owner_id.unwrap_or_else(|| owner.to_owned()),
            status: self.status.unwrap_or_default(),
            config,
            ..Default::default()
        }
    }
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub created: u64,
    /// Rows not created, by reason code (`unreadable` for rows that could
    /// not be read; the registry's code otherwise).
    pub refused: std::collections::BTreeMap<String, u64>,
}

/// Rows of the file with their line numbers, read one at a time.
type Rows = Box<dyn Iterator<Item = (u64, Result<Row, String>)>>;

fn rows(input: Box<dyn Read>, format: Format) -> Rows {
    match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(input);
            let headers = match reader.headers() {
                Ok(h) => h.clone(),
                Err(e) => return Box::new(std::iter::once((1, Err(e.to_string())))),
            };
            Box::new(reader.into_records().map(move |r| {
                let line = |p: Option<&csv::Position>| p.map_or(0, csv::Position::line);
                match r {
                    Ok(rec) => (
                        line(rec.position()),
                        rec.deserialize::<Row>(Some(&headers))
                            .map_err(|e| e.to_string()),
                    ),
                    Err(e) => (line(e.position()), Err(e.to_string())),
                }
            }))
        }
        Format::Jsonl => Box::new(
            BufReader::new(input)
                .lines()
                .enumerate()
                .map(|(i, l)| (i as u64 + 1, l))
                .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
                .map(|(n, l)| {
                    (
                        n,
                        l.map_err(|e| e.to_string())
                            .and_then(|l| serde_json::from_str(&l).map_err(|e| e.to_string())),
                    )
                }),
        ),
    }
}

pub async fn run(
    client: &mut iot_proto::RegistryClient,
    args: ImportArgs,
) -> anyhow::Result<Outcome> {
    let format = args.format.unwrap_or_else(|| {
        if args.file.extension().is_some_and(|e| e == "csv") {
            Format::Csv
        } else {
            Format::Jsonl
        }
    });
    let (input, size): (Box<dyn Read>, u64) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::stdin()), 0)
    } else {
        let f = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(f), size)
    };
    let progress = indicatif::ProgressBar::new(size);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let counted = Box::new(progress.wrap_read(input));
    let mut report: Box<dyn Write> = match &args.errors {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
        None => Box::new(std::io::stderr()),
    };
    let mut credentials = match &args.credentials_out {
        Some(p) => {
            let mut w = csv::Writer::from_path(p)
                .with_context(|| format!("cannot write {}", p.display()))?;
            w.write_record(["device_id", "username", "password"])?;
            Some(w)
        }
        None => None,
    };
    let owner = args.owner.unwrap_or_default();
    let mut outcome = Outcome::default();
    let mut batch: Vec<(u64, CreateDeviceRequest)> = Vec::with_capacity(PER_CALL);
    let mut rows = rows(counted, format).peekable();
    while rows.peek().is_some() {
        for (line, row) in rows.by_ref() {
            match row {
                Ok(row) => batch.push((line, row.request(&owner))),
                Err(e) => refuse(&mut outcome, &mut *report, line, "", "unreadable", &e)?,
            }
            if batch.len() == PER_CALL {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let sent: Vec<(u64, String)> = batch
            .iter()
            .map(|(l, r)| (*l, r.device_id.clone()))
            .collect();
        let results = client
            .create_devices(CreateDevicesRequest {
                devices: batch.drain(..).map(|(_, r)| r).collect(),
                issue_credentials: credentials.is_some(),
            })
            .await
            .context("CreateDevices")?
            .into_inner()
            .results;
        anyhow::ensure!(
            results.len() == sent.len(),
            "the registry answered {} results for {} devices",
            results.len(),
            sent.len()
        );
        for ((line, device_id), r) in sent.into_iter().zip(results) {
            if r.error_code.is_empty() {
                outcome.created += 1;
                if let (Some(w), Some(c)) = (credentials.as_mut(), r.credentials) {
                    w.write_record([&device_id, &c.username, &c.password])?;
                }
            } else {
                refuse(
                    &mut outcome,
                    &mut *report,
                    line,
                    &device_id,
                    &r.error_code,
                    &r.error,
                )?;
            }
        }
        progress.set_message(format!("{} created", outcome.created));
    }
    progress.finish_and_clear();
    report.flush()?;
    if let Some(mut w) = credentials {
        w.flush()?;
    }
    Ok(outcome)
}

/// Counts a row not created and writes it to the report.
fn refuse(
    outcome: &mut Outcome,
    report: &mut dyn Write,
    line: u64,
    device_id: &str,
    code: &str,
    error: &str,
) -> anyhow::Result<()> {
    *outcome.refused.entry(code.to_owned()).or_default() += 1;
    let entry = serde_json::json!({
        "line": line, "device_id": device_id, "code": code, "error": error,
    });
    writeln!(report, "{entry}")?;
    Ok(())
}
