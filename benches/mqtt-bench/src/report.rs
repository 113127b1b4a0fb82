//! A scenario's result: one JSON line, then the same as a table for people.

use std::io::Write;

use serde_json::{Map, Value};

use crate::verify::ErrorLog;

/// A scenario's result and verdict.
#[derive(Debug)]
pub struct Report {
    fields: Map<String, Value>,
    failures: Vec<String>,
    errors: u64,
    first_errors: Vec<String>,
}

impl Report {
    /// An empty result of `scenario`.
    pub fn new(scenario: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("scenario".into(), Value::from(scenario));
        Self {
            fields,
            failures: Vec::new(),
            errors: 0,
            first_errors: Vec::new(),
        }
    }

    /// Sets a field.
    pub fn set(&mut self, key: &str, value: Value) {
        self.fields.insert(key.into(), value);
    }

    /// Sets the fields of a JSON object.
    pub fn merge(&mut self, value: Value) {
        if let Value::Object(map) = value {
            self.fields.extend(map);
        }
    }

    /// A numeric field.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.fields.get(key)?.as_f64()
    }

    /// Marks the run failed, for this reason.
    pub fn fail(&mut self, why: String) {
        self.failures.push(why);
    }

    /// Adds a run's errors: any error fails the run.
    pub fn errors(&mut self, log: &ErrorLog) {
        if log.count() > 0 {
            self.errors += log.count();
            for e in log.first() {
                if self.first_errors.len() < 8 {
                    self.first_errors.push(e);
                }
            }
        }
    }

    /// Whether the run passed its checks.
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.errors == 0
    }

    /// The result as one JSON object.
    pub fn to_json(&self, broker: &str) -> Value {
        let mut map = Map::new();
        map.insert("broker".into(), Value::from(broker));
        map.extend(self.fields.clone());
        map.insert("ok".into(), Value::from(self.ok()));
        map.insert("failures".into(), Value::from(self.failures.clone()));
        map.insert("errors".into(), Value::from(self.errors));
        map.insert(
            "first_errors".into(),
            Value::from(self.first_errors.clone()),
        );
        Value::Object(map)
    }

    /// Prints the JSON line, then the table. A closed standard output is not an error here:
    /// the caller stopped listening.
    pub fn print(&self, broker: &str) {
        let _ = self.write(broker, &mut std::io::stdout().lock());
    }

    fn write(&self, broker: &str, out: &mut impl Write) -> std::io::Result<()> {
        let json = self.to_json(broker);
        writeln!(out, "{json}")?;
        let Value::Object(map) = json else {
            return Ok(());
        };
        let width = map.keys().map(String::len).max().unwrap_or(0);
        writeln!(out, "  {:width$}  value", "field")?;
        writeln!(out, "  {:-<width$}  {:-<12}", "", "")?;
        for (key, value) in &map {
            let shown = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => human_number(n),
                other => other.to_string(),
            };
            writeln!(out, "  {key:width$}  {shown}")?;
        }
        out.flush()
    }
}

/// A number with thousands separated, for reading.
fn human_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_u64() {
        let digits = i.to_string();
        let mut out = String::new();
        for (k, c) in digits.chars().enumerate() {
            if k > 0 && (digits.len() - k) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        let n = |i: u64| human_number(&serde_json::Number::from(i));
        assert_eq!(n(0), "0");
        assert_eq!(n(999), "999");
        assert_eq!(n(1000), "1,000");
        assert_eq!(n(1_234_567), "1,234,567");
    }

    #[test]
    fn verdict() {
        let mut report = Report::new("pairs");
        assert!(report.ok());
        report.fail("lost".into());
        assert!(!report.ok());
        assert_eq!(report.to_json("x")["ok"], Value::from(false));
    }
}
