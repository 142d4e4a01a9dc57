//! `shadow usage [--since …] [NAME]`: what apps used, from `GET /usage`. All apps: one row
//! per app over the span; one app: one row per hour.

use std::{collections::BTreeMap, io::Write};

use shadow_common::{
    client::MasterClient,
    usage::{bytes_text, UsageRow},
};

use crate::{find, json_text, table, write, CliError};

/// `--since` as unix seconds: a span back from `now` (`30m`, `24h`, `7d`) or a UTC time.
pub fn since(text: &str, now: u64) -> Result<u64, CliError> {
    let t = text.trim();
    let unit = |c: char| match c {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    };
    if let Some(last) = t.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        if let (Some(mult), Ok(n)) = (unit(last), t[..t.len() - 1].parse::<u64>()) {
            return Ok(now.saturating_sub(n.saturating_mul(mult)));
        }
    }
    let rfc3339 = time::format_description::well_known::Rfc3339;
    if let Ok(at) = time::OffsetDateTime::parse(t, &rfc3339) {
        return Ok(at.unix_timestamp().max(0) as u64);
    }
    let day = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(t, &day) {
        return Ok(d.midnight().assume_utc().unix_timestamp().max(0) as u64);
    }
    Err(CliError::Usage(format!(
        "--since {text:?} is not a span (30m, 24h, 7d) or a UTC time (2026-11-27, 2026-11-27T08:00:00Z)"
    )))
}

fn hour_text(hour: u64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:00");
    time::OffsetDateTime::from_unix_timestamp(hour as i64)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| hour.to_string())
}

fn cells(first: String, r: &UsageRow) -> Vec<String> {
    vec![
        first,
        format!("{:.0}s", r.running_s),
        r.cold_starts.to_string(),
        r.requests.to_string(),
        bytes_text(r.bytes_in),
        bytes_text(r.bytes_out),
        format!("{:.1}s", r.cpu_s),
        bytes_text(r.peak_memory_bytes),
    ]
}

const COLUMNS: [&str; 7] = [
    "RUNNING", "STARTS", "REQUESTS", "IN", "OUT", "CPU", "PEAK MEM",
];

pub async fn show(
    client: &MasterClient,
    app: Option<&str>,
    since_text: &str,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Hours are whole: the hour holding `since` is in.
    let from = since(since_text, now)? / 3600 * 3600;
    let task = match app {
        Some(a) => Some(find(client, a).await?),
        None => None,
    };
    let rows = client
        .usage(task.as_ref().map(|t| t.id.as_str()), Some(from), None)
        .await?;
    if json {
        return write(out, &json_text(&rows));
    }
    if task.is_some() {
        let body: Vec<Vec<String>> = rows.iter().map(|r| cells(hour_text(r.hour), r)).collect();
        let mut header = vec!["HOUR (UTC)"];
        header.extend(COLUMNS);
        return write(out, &table(&header, &body));
    }
    let mut per_app: BTreeMap<String, UsageRow> = BTreeMap::new();
    for r in rows {
        let key = r
            .name
            .clone()
            .unwrap_or_else(|| format!("(deleted {})", r.task_id));
        match per_app.get_mut(&key) {
            None => {
                per_app.insert(key, r);
            }
            Some(t) => t.add(&r),
        }
    }
    let body: Vec<Vec<String>> = per_app.iter().map(|(n, r)| cells(n.clone(), r)).collect();
    let mut header = vec!["APP"];
    header.extend(COLUMNS);
    write(out, &table(&header, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_spans_and_times() {
        let now = 1_800_000_000;
        assert_eq!(since("24h", now).expect("span"), now - 86_400);
        assert_eq!(since("30m", now).expect("span"), now - 1800);
        assert_eq!(since("7d", now).expect("span"), now - 7 * 86_400);
        assert_eq!(
            since("2026-11-27T08:00:00Z", now).expect("time"),
            1_795_737_600 + 8 * 3600
        );
        assert_eq!(since("2026-11-27", now).expect("day"), 1_795_737_600);
        let e = since("yesterday", now).expect_err("not a time");
        assert!(e.to_string().contains("24h"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
