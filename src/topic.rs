//! MQTT topics: filters (`sensors/+/telemetry`), topic names, and the small
//! templates outpost fills with a device name (`devices/{device}/attributes`).
//!
//! Every layer needs these (routes match filters, the broker checks names,
//! sinks fill templates), so they live here at the bottom and import nothing.

/// An MQTT topic filter, split into levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    levels: Vec<String>,
}

impl TopicFilter {
    pub fn parse(filter: &str) -> Result<TopicFilter, String> {
        if filter.is_empty() {
            return Err("a topic filter must not be empty".into());
        }
        let levels: Vec<String> = filter.split('/').map(str::to_string).collect();
        for (i, l) in levels.iter().enumerate() {
            if l.contains('#') && (l != "#" || i != levels.len().saturating_sub(1)) {
                return Err(format!(
                    "`{filter}`: `#` must be a whole level and the last one"
                ));
            }
            if l.contains('+') && l != "+" {
                return Err(format!("`{filter}`: `+` must be a whole level"));
            }
        }
        Ok(TopicFilter { levels })
    }

    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('/');
        for (i, level) in self.levels.iter().enumerate() {
            match level.as_str() {
                // `#` also matches the parent level itself (`a/#` matches `a`),
                // but never topics starting with `$` at the first level.
                "#" => return !(i == 0 && topic.starts_with('$')),
                "+" => match parts.next() {
                    Some(p) if !(i == 0 && p.starts_with('$')) => {}
                    _ => return false,
                },
                exact => {
                    if parts.next() != Some(exact) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// The filter as written.
    pub fn text(&self) -> String {
        self.levels.join("/")
    }

    /// The topic level that names the device: the one given, else the first `+`.
    pub fn device_level(&self, given: Option<usize>) -> Result<usize, String> {
        match given {
            Some(l) => {
                let ends_in_hash = self.levels.last().is_some_and(|x| x == "#");
                let exists = self.levels.get(l).is_some_and(|x| x != "#");
                if exists || ends_in_hash {
                    Ok(l)
                } else {
                    Err(format!(
                        "level {l} does not exist in a filter with {} levels (levels count from 0)",
                        self.levels.len()
                    ))
                }
            }
            None => self.levels.iter().position(|l| l == "+").ok_or_else(|| {
                "the filter has no `+` level to take the device name from: set `device_level` or `device`".to_string()
            }),
        }
    }
}

/// The local topics of device downlinks: RPC requests and responses and
/// shared attributes, as templates with `{device}` and `{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopics {
    /// `devices/{device}/rpc/request/{id}`
    pub rpc_request: String,
    /// `devices/{device}/rpc/response/{id}`
    pub rpc_response: String,
    /// `devices/{device}/attributes`
    pub attributes: String,
}

impl Default for DeviceTopics {
    fn default() -> DeviceTopics {
        DeviceTopics {
            rpc_request: "devices/{device}/rpc/request/{id}".into(),
            rpc_response: "devices/{device}/rpc/response/{id}".into(),
            attributes: "devices/{device}/attributes".into(),
        }
    }
}

/// The `{placeholders}` of a template, in order, or why it is not one.
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some((_, after)) = rest.split_once('{') {
        let (key, tail) = after
            .split_once('}')
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
        out.push(key);
        rest = tail;
    }
    Ok(out)
}

/// Matches `topic` against a template; returns `{device}` and `{id}`.
pub fn captures(template: &str, topic: &str) -> Option<(String, String)> {
    let t: Vec<&str> = template.split('/').collect();
    let l: Vec<&str> = topic.split('/').collect();
    if t.len() != l.len() {
        return None;
    }
    let (mut device, mut id) = (String::new(), String::new());
    for (t, l) in t.iter().zip(&l) {
        match *t {
            "{device}" => device = l.to_string(),
            "{id}" => id = l.to_string(),
            _ if t == l => {}
            _ => return None,
        }
    }
    Some((device, id))
}

/// Fills `{device}` and `{id}`.
pub fn fill(template: &str, device: &str, id: &str) -> String {
    template.replace("{device}", device).replace("{id}", id)
}

/// `devices/{device}/rpc/response/{id}` → `devices/+/rpc/response/+`.
pub fn filter_of(template: &str) -> String {
    fill(template, "+", "+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matching() {
        let f = TopicFilter::parse("sensors/+/telemetry").unwrap();
        assert!(f.matches("sensors/t1/telemetry"));
        assert!(!f.matches("sensors/t1/telemetry/x"));
        assert!(!f.matches("sensors/telemetry"));
        let h = TopicFilter::parse("a/#").unwrap();
        assert!(h.matches("a"));
        assert!(h.matches("a/b/c"));
        assert!(!TopicFilter::parse("#").unwrap().matches("$SYS/x"));
        assert!(TopicFilter::parse("a/#/b").is_err());
        assert!(TopicFilter::parse("a/b+").is_err());
    }

    #[test]
    fn device_level_defaults_to_first_plus() {
        let f = TopicFilter::parse("site/x/+/t").unwrap();
        assert_eq!(f.device_level(None), Ok(2));
        assert!(TopicFilter::parse("a/b")
            .unwrap()
            .device_level(None)
            .is_err());
        assert!(TopicFilter::parse("a/b")
            .unwrap()
            .device_level(Some(5))
            .is_err());
        assert_eq!(
            TopicFilter::parse("a/#").unwrap().device_level(Some(3)),
            Ok(3)
        );
    }

    #[test]
    fn templates_capture_device_and_id() {
        let t = DeviceTopics::default();
        assert_eq!(
            captures(&t.rpc_request, "devices/meter-1/rpc/request/42"),
            Some(("meter-1".into(), "42".into()))
        );
        assert_eq!(
            captures(&t.rpc_request, "devices/meter-1/rpc/response/42"),
            None
        );
        assert_eq!(
            captures(&t.attributes, "devices/x/attributes"),
            Some(("x".into(), String::new()))
        );
        assert_eq!(
            fill(&t.rpc_response, "meter-1", "42"),
            "devices/meter-1/rpc/response/42"
        );
        assert_eq!(filter_of(&t.rpc_response), "devices/+/rpc/response/+");
    }
}
