//! [`CronSchedule`]: a cron expression in an IANA time zone, parsed with the
//! crates the cron trigger uses (croner, chrono-tz), so validation accepts
//! exactly what the agent will run (DESIGN §8.3).

use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::suggest;

/// A parsed cron trigger: when it fires, in which time zone.
///
/// Expressions have five fields (minute hour day-of-month month day-of-week)
/// or six with a leading seconds field; croner's extensions (`L`, `W`, `#`,
/// names such as `MON`, `@daily`) are accepted. A time that falls in a DST
/// gap fires at the next valid time, as GitHub Actions does.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
    timezone: Tz,
}

/// Why a cron expression or time zone is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression has the wrong number of fields.
    #[error(
        "invalid cron expression {expression:?}: it has {fields} field{plural}; use 5 (minute hour \
         day-of-month month day-of-week) or 6 with a leading seconds field",
        plural = if *fields == 1 { "" } else { "s" }
    )]
    FieldCount {
        /// The expression as written.
        expression: String,
        /// How many fields it has.
        fields: usize,
    },
    /// croner rejected the expression.
    #[error("invalid cron expression {expression:?}: {reason}")]
    Expression {
        /// The expression as written.
        expression: String,
        /// croner's explanation.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone {name:?}{hint}")]
    Timezone {
        /// The name as written.
        name: String,
        /// "; did you mean ...?" or how to write one.
        hint: String,
    },
}

impl CronSchedule {
    /// Parses `expression` in `timezone` (an IANA name; `None` means UTC).
    pub fn new(expression: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        let cron = parse_cron(expression)?;
        let timezone = match timezone {
            Some(name) => parse_timezone(name)?,
            None => Tz::UTC,
        };
        Ok(Self { cron, timezone })
    }

    /// The time zone the expression is read in.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The first fire strictly after `after`, or `None` if there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        self.cron.find_next_occurrence(&local, false).ok().map(|next| next.with_timezone(&Utc))
    }

    /// Whether the schedule fires at exactly `at`.
    pub fn fires_at(&self, at: DateTime<Utc>) -> bool {
        self.next_after(at - chrono::Duration::milliseconds(1)) == Some(at)
    }

    /// The fires after `after` up to and including `until`: at most the `limit` latest of
    /// them, oldest first.
    ///
    /// The search looks back from `until` over growing windows (a minute, an hour, a day,
    /// a month, a year, then everything), so a schedule that fires every second and was
    /// missed for a week costs a minute's worth of steps, not a week's.
    pub fn missed(&self, after: DateTime<Utc>, until: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        const WINDOWS_S: [i64; 5] = [60, 3_600, 86_400, 31 * 86_400, 366 * 86_400];
        const MAX_STEPS: usize = 200_000;
        if limit == 0 || until <= after {
            return Vec::new();
        }
        let windows = WINDOWS_S.iter().map(|s| until - chrono::Duration::seconds(*s)).chain(std::iter::once(after));
        for start in windows {
            let start = start.max(after);
            let mut found = Vec::new();
            let mut cursor = start;
            for _ in 0..MAX_STEPS {
                match self.next_after(cursor) {
                    Some(next) if next <= until => {
                        found.push(next);
                        cursor = next;
                    }
                    _ => break,
                }
            }
            if found.len() >= limit || start == after {
                let skip = found.len().saturating_sub(limit);
                return found.split_off(skip);
            }
        }
        Vec::new()
    }
}

/// Parses a cron expression of five fields, or six with seconds.
pub(crate) fn parse_cron(expression: &str) -> Result<Cron, ScheduleError> {
    let fields = expression.split_whitespace().count();
    let nickname = expression.trim_start().starts_with('@');
    if !nickname && !(5..=6).contains(&fields) {
        return Err(ScheduleError::FieldCount { expression: expression.to_string(), fields });
    }
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    let cron = parser.parse(expression).map_err(|error| ScheduleError::Expression {
        expression: expression.to_string(),
        reason: bad_field(&parser, expression).unwrap_or_else(|| error.to_string()),
    })?;
    if !fires_ever(&cron) {
        return Err(ScheduleError::Expression {
            expression: expression.to_string(),
            reason: "it never fires, because no date matches its day and month fields".to_string(),
        });
    }
    Ok(cron)
}

/// Whether the schedule matches any time at all.
///
/// croner searches up to the year 5000 for the next fire of an expression
/// such as `0 0 30 2 *`, which takes a minute; an agent must never be handed
/// one. Days repeat with the 400-year Gregorian cycle (146,097 days, a whole
/// number of weeks), so one cycle decides it; a possible schedule stops at
/// its first matching day.
fn fires_ever(cron: &Cron) -> bool {
    let pattern = &cron.pattern;
    let any = |range: std::ops::Range<u32>, matches: &dyn Fn(u32) -> bool| range.into_iter().any(matches);
    if !any(0..60, &|s| pattern.second_match(s).unwrap_or(false))
        || !any(0..60, &|m| pattern.minute_match(m).unwrap_or(false))
        || !any(0..24, &|h| pattern.hour_match(h).unwrap_or(false))
    {
        return false;
    }
    let Some(start) = NaiveDate::from_ymd_opt(2001, 1, 1) else {
        return true;
    };
    start.iter_days().take(146_097).any(|date| {
        pattern.month_match(date.month()).unwrap_or(false)
            && pattern.day_match(date.year(), date.month(), date.day(), weekday(date)).unwrap_or(false)
    })
}

/// The fields of a five-field expression, with what each allows.
const FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT"),
];

/// A date's weekday as croner counts it.
fn weekday(date: NaiveDate) -> croner::Weekday {
    croner::Weekday::from_days_from_sunday(date.weekday().num_days_from_sunday())
}

/// Which field croner rejects, found by parsing each field alone among
/// wildcards, since croner's own message does not say.
fn bad_field(parser: &CronParser, expression: &str) -> Option<String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let named: Vec<(&str, &str)> =
        if fields.len() == 6 { std::iter::once(("second", "0-59")).chain(FIELDS).collect() } else { FIELDS.to_vec() };
    if named.len() != fields.len() {
        return None;
    }
    fields.iter().enumerate().find_map(|(i, field)| {
        let alone: Vec<&str> = (0..fields.len()).map(|j| if i == j { *field } else { "*" }).collect();
        parser.parse(&alone.join(" ")).err().map(|_| {
            let (name, allowed) = named[i];
            format!("the {name} field {field:?} is not valid; it takes {allowed}, with * , - /")
        })
    })
}

/// Parses an IANA time zone name, suggesting a close one when it is not.
pub(crate) fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name).map_err(|_| {
        let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
        let hint = match suggest::did_you_mean(name, names) {
            Some(close) => format!("; did you mean {close:?}?"),
            None => "; use an IANA name such as \"Europe/Berlin\" or \"UTC\"".to_string(),
        };
        ScheduleError::Timezone { name: name.to_string(), hint }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn fires_in_its_time_zone() {
        let nightly = CronSchedule::new("0 3 * * *", Some("Europe/Berlin")).unwrap();
        // 03:00 in Berlin in January is 02:00 UTC.
        assert_eq!(nightly.next_after(at("2024-01-10T12:00:00Z")), Some(at("2024-01-11T02:00:00Z")));
        let with_seconds = CronSchedule::new("30 * * * * *", None).unwrap();
        assert_eq!(with_seconds.next_after(at("2024-01-10T12:00:00Z")), Some(at("2024-01-10T12:00:30Z")));
    }

    /// DESIGN §8.3: across daylight-saving changes a daily schedule fires once a day, never
    /// twice and never not at all. Europe/Berlin springs forward at 02:00 on 2026-03-29 (02:30
    /// does not exist that day) and falls back at 03:00 on 2026-10-25 (02:30 comes twice).
    #[test]
    fn daylight_saving_changes_neither_skip_nor_double_a_daily_fire() {
        let nightly = CronSchedule::new("30 2 * * *", Some("Europe/Berlin")).unwrap();
        // Spring: the day before at 02:30 CET (01:30 UTC); that day's fire comes at the first
        // valid time after the gap, 03:00 CEST (01:00 UTC); then 02:30 CEST (00:30 UTC).
        let fires = nightly.missed(at("2026-03-27T12:00:00Z"), at("2026-03-30T12:00:00Z"), 10);
        assert_eq!(fires, [at("2026-03-28T01:30:00Z"), at("2026-03-29T01:00:00Z"), at("2026-03-30T00:30:00Z")]);
        // Autumn: 02:30 CEST (00:30 UTC) the day before; on the day with two 02:30s one fire,
        // at the first (CEST, 00:30 UTC); then 02:30 CET (01:30 UTC).
        let fires = nightly.missed(at("2026-10-23T12:00:00Z"), at("2026-10-26T12:00:00Z"), 10);
        assert_eq!(fires, [at("2026-10-24T00:30:00Z"), at("2026-10-25T00:30:00Z"), at("2026-10-26T01:30:00Z")]);
    }

    #[test]
    fn finds_missed_fires_latest_first_within_the_limit() {
        let every_second = CronSchedule::new("* * * * * *", None).unwrap();
        let after = at("2024-01-10T12:00:00Z");
        let until = at("2024-01-17T12:00:00Z");
        // A week of missed seconds: only the latest few are looked for and returned.
        assert_eq!(every_second.missed(after, until, 1), vec![until]);
        assert_eq!(
            every_second.missed(after, until, 3),
            vec![at("2024-01-17T11:59:58Z"), at("2024-01-17T11:59:59Z"), until]
        );
        let monthly = CronSchedule::new("0 0 1 * *", None).unwrap();
        assert_eq!(
            monthly.missed(at("2024-01-15T00:00:00Z"), at("2024-03-20T00:00:00Z"), 1),
            vec![at("2024-03-01T00:00:00Z")]
        );
        assert_eq!(
            monthly.missed(at("2024-01-15T00:00:00Z"), at("2024-03-20T00:00:00Z"), 10),
            vec![at("2024-02-01T00:00:00Z"), at("2024-03-01T00:00:00Z")]
        );
        assert!(monthly.missed(at("2024-03-02T00:00:00Z"), at("2024-03-20T00:00:00Z"), 10).is_empty());
        assert!(monthly.fires_at(at("2024-03-01T00:00:00Z")));
        assert!(!monthly.fires_at(at("2024-03-01T00:00:01Z")));
    }

    #[test]
    fn explains_bad_input() {
        assert_eq!(
            CronSchedule::new("0 3 * *", None).unwrap_err().to_string(),
            "invalid cron expression \"0 3 * *\": it has 4 fields; use 5 (minute hour day-of-month \
             month day-of-week) or 6 with a leading seconds field"
        );
        assert_eq!(
            CronSchedule::new("0 25 * * *", None).unwrap_err().to_string(),
            "invalid cron expression \"0 25 * * *\": the hour field \"25\" is not valid; it takes \
             0-23, with * , - /"
        );
        assert_eq!(
            CronSchedule::new("0 0 30 2 *", None).unwrap_err().to_string(),
            "invalid cron expression \"0 0 30 2 *\": it never fires, because no date matches its \
             day and month fields"
        );
        // February 29th comes round, and so does one that is a Monday.
        assert!(CronSchedule::new("0 0 29 2 *", None).is_ok());
        assert!(CronSchedule::new("0 0 29 2 +MON", None).is_ok());
        assert_eq!(
            CronSchedule::new("0 3 * * *", Some("Europe/Berln")).unwrap_err().to_string(),
            "unknown time zone \"Europe/Berln\"; did you mean \"Europe/Berlin\"?"
        );
        assert_eq!(
            CronSchedule::new("0 3 * * *", Some("Mars/Olympus")).unwrap_err().to_string(),
            "unknown time zone \"Mars/Olympus\"; use an IANA name such as \"Europe/Berlin\" or \"UTC\""
        );
    }
}
