//! Parsing and validation of what clients send: ride timestamps
//! (`DD-MM-YYYY:SS-MM-HH`), SHA1 hex passwords, usernames, area numbers and
//! ride ids. Every function is total: any input, however long, yields a value
//! or an [`Invalid`] (a 400), never a panic.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use serde_json::Value as Json;

/// Why a client's input was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// The highest area number (areas are 1..=198, see the upstream AreaNameEnum).
pub const MAX_AREA: u16 = 198;

/// The API's timestamp format: day-month-year, then seconds-minutes-hours.
pub const API_FORMAT: &str = "%d-%m-%Y:%S-%M-%H";
/// How the DBaaS stores a timestamp, so that text order is time order.
pub const DB_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Shows at most the first 40 characters of a value in an error message.
pub fn preview(s: &str) -> String {
    let mut it = s.chars();
    let head: String = it.by_ref().take(40).collect();
    if it.next().is_some() {
        format!("{head}...")
    } else {
        head
    }
}

/// Parses `DD-MM-YYYY:SS-MM-HH` strictly: two-digit fields, a four-digit year,
/// and a real date and time (no 31st of February, no 60th second).
pub fn parse_timestamp(s: &str) -> Result<NaiveDateTime, Invalid> {
    let shape = || {
        Invalid(format!(
            "timestamp {:?} is not in the format DD-MM-YYYY:SS-MM-HH",
            preview(s)
        ))
    };
    let b = s.as_bytes();
    if b.len() != 19 {
        return Err(shape());
    }
    let separators = [(2, b'-'), (5, b'-'), (10, b':'), (13, b'-'), (16, b'-')];
    for (i, c) in b.iter().enumerate() {
        let ok = match separators.iter().find(|(at, _)| *at == i) {
            Some((_, sep)) => c == sep,
            None => c.is_ascii_digit(),
        };
        if !ok {
            return Err(shape());
        }
    }
    let num = |from: usize, to: usize| -> u32 {
        b[from..to]
            .iter()
            .fold(0, |n, d| n * 10 + u32::from(d - b'0'))
    };
    let (day, month, year) = (num(0, 2), num(3, 5), num(6, 10));
    let (sec, min, hour) = (num(11, 13), num(14, 16), num(17, 19));
    let year = i32::try_from(year).map_err(|_| shape())?;
    let date = NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| Invalid(format!("timestamp {s:?} is not a real date")))?;
    let time = NaiveTime::from_hms_opt(hour, min, sec)
        .ok_or_else(|| Invalid(format!("timestamp {s:?} is not a real time of day")))?;
    Ok(date.and_time(time))
}

/// Formats a time for API responses: `DD-MM-YYYY:SS-MM-HH`.
pub fn format_timestamp(t: NaiveDateTime) -> String {
    t.format(API_FORMAT).to_string()
}

/// Formats a time for the DBaaS: `YYYY-MM-DD HH:MM:SS`.
pub fn to_db_timestamp(t: NaiveDateTime) -> String {
    t.format(DB_FORMAT).to_string()
}

/// Turns a stored `YYYY-MM-DD HH:MM:SS` back into the API format; a value that
/// does not parse (written by someone else) is passed through unchanged.
pub fn db_to_api_timestamp(stored: &str) -> String {
    NaiveDateTime::parse_from_str(stored, DB_FORMAT)
        .map(format_timestamp)
        .unwrap_or_else(|_| stored.to_string())
}

/// True for a SHA1 hex digest: exactly 40 hex digits, either case.
pub fn is_sha1_hex(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// A required, non-empty string field.
pub fn required_string(fields: &Fields, name: &str) -> Result<String, Invalid> {
    match fields.get(name) {
        None | Some(Json::Null) => invalid(format!("missing field {name:?}")),
        Some(Json::String(s)) if s.is_empty() => invalid(format!("field {name:?} is empty")),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(_) => invalid(format!("field {name:?} must be a string")),
    }
}

/// A username: a non-empty string of at most the DBaaS's longest value
/// ([`MAX_TEXT`](dbaas_api::db::request::limits::MAX_TEXT) bytes).
pub fn username(fields: &Fields, name: &str) -> Result<String, Invalid> {
    use dbaas_api::db::request::limits::MAX_TEXT;
    let s = required_string(fields, name)?;
    if s.len() > MAX_TEXT {
        return invalid(format!(
            "{name:?} is {} bytes long; at most {MAX_TEXT} are accepted",
            s.len()
        ));
    }
    Ok(s)
}

/// A password: a SHA1 hex digest.
pub fn password(fields: &Fields) -> Result<String, Invalid> {
    let p = required_string(fields, "password")?;
    if is_sha1_hex(&p) {
        Ok(p)
    } else {
        invalid("\"password\" must be a SHA1 hex digest: exactly 40 hex digits")
    }
}

/// An area number 1..=198 given as a JSON number or a decimal string.
pub fn area(fields: &Fields, name: &str) -> Result<u16, Invalid> {
    match fields.get(name) {
        None | Some(Json::Null) => invalid(format!("missing field {name:?}")),
        Some(Json::String(s)) => area_str(name, s),
        Some(Json::Number(n)) => match n.as_u64() {
            Some(v) => area_value(name, v),
            None => invalid(format!(
                "{name:?} must be an area number 1..={MAX_AREA}, got {}",
                preview(&n.to_string())
            )),
        },
        Some(_) => invalid(format!("{name:?} must be an area number 1..={MAX_AREA}")),
    }
}

/// An area number 1..=198 from text (a query parameter or a form field):
/// decimal digits only; any length is refused cleanly, never overflows.
pub fn area_str(name: &str, s: &str) -> Result<u16, Invalid> {
    let bad = || {
        Invalid(format!(
            "{name:?} must be an area number 1..={MAX_AREA}, got {:?}",
            preview(s)
        ))
    };
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 3 {
        return Err(bad());
    }
    let v: u64 = digits.parse().unwrap_or(0);
    area_value(name, v)
}

fn area_value(name: &str, v: u64) -> Result<u16, Invalid> {
    match u16::try_from(v) {
        Ok(a) if (1..=MAX_AREA).contains(&a) => Ok(a),
        _ => invalid(format!(
            "{name:?} must be an area number 1..={MAX_AREA}, got {v}"
        )),
    }
}

/// A ride id from the path: `None` when it cannot name a ride (not a
/// non-negative decimal integer that fits the DBaaS's 64-bit integers).
pub fn ride_id(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok()
}

/// A request body's fields: a JSON object, or form fields as JSON strings.
pub type Fields = serde_json::Map<String, Json>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Json) -> Fields {
        match v {
            Json::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn timestamps_parse_in_the_api_format_and_round_trip() {
        let t = parse_timestamp("26-01-2020:27-40-18").unwrap();
        assert_eq!(to_db_timestamp(t), "2020-01-26 18:40:27");
        assert_eq!(format_timestamp(t), "26-01-2020:27-40-18");
        assert_eq!(
            db_to_api_timestamp("2020-01-26 18:40:27"),
            "26-01-2020:27-40-18"
        );
        assert_eq!(db_to_api_timestamp("garbage"), "garbage");
        let leap = parse_timestamp("29-02-2024:00-00-00").unwrap();
        assert_eq!(to_db_timestamp(leap), "2024-02-29 00:00:00");
    }

    #[test]
    fn timestamps_are_refused_unless_exact_and_real() {
        for bad in [
            "",
            "26-01-2020",
            "26-01-2020:27-40-1",
            "6-01-2020:27-40-18",
            "26/01/2020:27-40-18",
            "26-01-2020 27-40-18",
            "2020-01-26 18:40:27",
            "26-01-2020:27-40-18 ",
            "+6-01-2020:27-40-18",
            "26-01-2020:27-40-1８",
            "31-02-2021:00-00-00",
            "29-02-2023:00-00-00",
            "00-01-2020:00-00-00",
            "01-13-2020:00-00-00",
            "01-01-2020:60-00-00",
            "01-01-2020:00-60-00",
            "01-01-2020:00-00-24",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?} accepted");
        }
        let huge = "1".repeat(1_000_000);
        assert!(parse_timestamp(&huge).unwrap_err().0.len() < 200);
    }

    #[test]
    fn sha1_is_forty_hex_digits_in_either_case() {
        assert!(is_sha1_hex("3d725109c7e7c0bfb9d709836735b56d943d263f"));
        assert!(is_sha1_hex("3D725109C7E7C0BFB9D709836735B56D943D263F"));
        assert!(!is_sha1_hex("3d725109c7e7c0bfb9d709836735b56d943d263"));
        assert!(!is_sha1_hex("3d725109c7e7c0bfb9d709836735b56d943d263f0"));
        assert!(!is_sha1_hex("3d725109c7e7c0bfb9d709836735b56d943d263g"));
        assert!(!is_sha1_hex(""));
        // 40 bytes but not 40 ASCII hex digits.
        assert!(!is_sha1_hex("ééééééééééééééééééééééééééééééééééééééé"));
        assert!(!is_sha1_hex(&"a".repeat(1_000_000)));
        let f = fields(json!({"password": 12}));
        assert!(password(&f).is_err());
    }

    #[test]
    fn areas_are_1_to_198_as_numbers_or_strings() {
        let ok = fields(json!({"a": 1, "b": "198", "c": "007", "d": 42}));
        assert_eq!(area(&ok, "a").unwrap(), 1);
        assert_eq!(area(&ok, "b").unwrap(), 198);
        assert_eq!(area(&ok, "c").unwrap(), 7);
        assert_eq!(area(&ok, "d").unwrap(), 42);
        let bad = fields(json!({
            "zero": 0, "high": 199, "neg": -1, "float": 1.5, "sfloat": "1.0",
            "empty": "", "space": " 5", "plus": "+5", "bool": true, "arr": [1],
            "big": 1e300, "u64": u64::MAX, "null": null,
        }));
        for k in bad.keys() {
            assert!(area(&bad, k).is_err(), "{k} accepted");
        }
        assert!(area(&bad, "missing").is_err());
        let long = "9".repeat(100_000);
        assert!(area_str("source", &long).is_err());
        assert!(area_str("source", &format!("{}5", "0".repeat(100_000))).is_ok());
    }

    #[test]
    fn strings_must_be_present_non_empty_strings() {
        let f = fields(json!({"u": "alice", "e": "", "n": 5, "z": null}));
        assert_eq!(username(&f, "u").unwrap(), "alice");
        for k in ["e", "n", "z", "missing"] {
            assert!(username(&f, k).is_err(), "{k} accepted");
        }
        let longest = "x".repeat(dbaas_api::db::request::limits::MAX_TEXT);
        let f = fields(json!({ "u": longest, "v": "x".repeat(100_000) }));
        assert_eq!(username(&f, "u").unwrap().len(), 4096);
        let e = username(&f, "v").unwrap_err();
        assert!(format!("{e:?}").contains("at most 4096"), "{e:?}");
    }

    #[test]
    fn ride_ids_are_non_negative_integers_that_fit() {
        assert_eq!(ride_id("0"), Some(0));
        assert_eq!(ride_id("1234"), Some(1234));
        assert_eq!(ride_id("9223372036854775807"), Some(i64::MAX));
        for bad in ["", "-1", "+1", "1.0", "abc", "9223372036854775808", " 1"] {
            assert_eq!(ride_id(bad), None, "{bad:?}");
        }
        assert_eq!(ride_id(&"9".repeat(100_000)), None);
    }

    #[test]
    fn previews_are_short() {
        assert_eq!(preview("abc"), "abc");
        assert_eq!(preview(&"é".repeat(100)).chars().count(), 43);
    }
}
