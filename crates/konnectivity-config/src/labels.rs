//! Kubernetes labels as the two binaries take them on the command line.
//!
//! * The server's `--lease-label` is a plain `k=v[,k=v…]` map ([`parse_lease_labels`]), put on
//!   its Lease and used, formatted back, as the garbage collector's selector.
//! * The agent's `--lease-label-selector` is real Kubernetes selector syntax ([`LabelSelector`]):
//!   `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>1`, `k<1`,
//!   comma-separated, empty = everything. Keys and values are checked like apimachinery does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::go::strconv::quote;

/// Parses `--lease-label`: each comma item must hold exactly one `=`; keys and values are
/// trimmed; an empty string is an error. Errors read `empty string provided` and
/// `invalid label format: <item>`.
pub fn parse_lease_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    if s.is_empty() {
        return Err("empty string provided".to_owned());
    }
    let mut labels = BTreeMap::new();
    for pair in s.split(',') {
        let mut parts = pair.split('=');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(v), None) => {
                labels.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => return Err(format!("invalid label format: {pair}")),
        }
    }
    Ok(labels)
}

/// A selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `k=v`
    Equals,
    /// `k==v`
    DoubleEquals,
    /// `k!=v`
    NotEquals,
    /// `k in (a,b)`
    In,
    /// `k notin (a,b)`
    NotIn,
    /// `k`
    Exists,
    /// `!k`
    DoesNotExist,
    /// `k>n`
    GreaterThan,
    /// `k<n`
    LessThan,
}

/// One comma-separated term of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values, sorted and de-duplicated (empty for `Exists`/`DoesNotExist`).
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether a label set satisfies this term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                value.is_some_and(|v| self.values.contains(v))
            }
            Operator::NotEquals | Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), Some(want)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let first = self.values.first().map(String::as_str).unwrap_or("");
        match self.operator {
            Operator::Exists => write!(f, "{key}"),
            Operator::DoesNotExist => write!(f, "!{key}"),
            Operator::Equals => write!(f, "{key}={first}"),
            Operator::DoubleEquals => write!(f, "{key}=={first}"),
            Operator::NotEquals => write!(f, "{key}!={first}"),
            Operator::GreaterThan => write!(f, "{key}>{first}"),
            Operator::LessThan => write!(f, "{key}<{first}"),
            Operator::In => write!(f, "{key} in ({})", self.values.join(",")),
            Operator::NotIn => write!(f, "{key} notin ({})", self.values.join(",")),
        }
    }
}

/// A parsed Kubernetes label selector; all requirements must match (empty matches everything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// Requirements, sorted by key.
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// True for the match-everything selector.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a label set satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Parses selector syntax (apimachinery `labels.Parse`); errors carry its wording.
    pub fn parse(s: &str) -> Result<Self, String> {
        let tokens = lex(s);
        let mut p = Parser { tokens, pos: 0 };
        let mut requirements = Vec::new();
        loop {
            match p.peek_value() {
                Token::Ident(_) | Token::Not => {
                    let r = p
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    requirements.push(r);
                    match p.next_value() {
                        Token::End => break,
                        Token::Comma => match p.peek_value() {
                            Token::Ident(_) | Token::Not => {}
                            t => {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.literal()
                                ));
                            }
                        },
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.literal()
                            ));
                        }
                    }
                }
                Token::End => break,
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.literal()
                    ));
                }
            }
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }
}

impl fmt::Display for LabelSelector {
    /// apimachinery's `Selector.String()`: requirements joined by `,` (empty for everything).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    In,
    NotIn,
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    End,
}

impl Token {
    fn literal(&self) -> &str {
        match self {
            Token::Ident(s) => s,
            Token::In => "in",
            Token::NotIn => "notin",
            Token::Not => "!",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::NotEquals => "!=",
            Token::Gt => ">",
            Token::Lt => "<",
            Token::Open => "(",
            Token::Close => ")",
            Token::Comma => ",",
            Token::End => "",
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn lex(s: &str) -> Vec<Token> {
    let chars: Vec<char> = s.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, ' ' | '\t' | '\r' | '\n') {
            i += 1;
        } else if is_special(c) {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let (tok, len) = match two.as_str() {
                "==" => (Token::DoubleEquals, 2),
                "!=" => (Token::NotEquals, 2),
                _ => (
                    match c {
                        '=' => Token::Equals,
                        '!' => Token::Not,
                        '(' => Token::Open,
                        ')' => Token::Close,
                        ',' => Token::Comma,
                        '>' => Token::Gt,
                        _ => Token::Lt,
                    },
                    1,
                ),
            };
            tokens.push(tok);
            i += len;
        } else {
            let start = i;
            while i < chars.len()
                && !is_special(chars[i])
                && !matches!(chars[i], ' ' | '\t' | '\r' | '\n')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(match word.as_str() {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Ident(word),
            });
        }
    }
    tokens.push(Token::End);
    tokens
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn raw_peek(&self) -> Token {
        self.tokens.get(self.pos).cloned().unwrap_or(Token::End)
    }

    /// In value context the keywords `in`/`notin` are plain identifiers.
    fn as_value(t: Token) -> Token {
        match t {
            Token::In => Token::Ident("in".to_owned()),
            Token::NotIn => Token::Ident("notin".to_owned()),
            t => t,
        }
    }

    fn peek_value(&self) -> Token {
        Self::as_value(self.raw_peek())
    }

    fn next_value(&mut self) -> Token {
        let t = self.peek_value();
        self.pos += 1;
        t
    }

    fn next_raw(&mut self) -> Token {
        let t = self.raw_peek();
        self.pos += 1;
        t
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let mut operator = None;
        let mut tok = self.next_value();
        if tok == Token::Not {
            operator = Some(Operator::DoesNotExist);
            tok = self.next_value();
        }
        let Token::Ident(key) = tok else {
            return Err(format!("found '{}', expected: identifier", tok.literal()));
        };
        validate_key(&key)?;
        if matches!(self.peek_value(), Token::End | Token::Comma) && operator.is_none() {
            operator = Some(Operator::Exists);
        }
        if let Some(op) = operator {
            return new_requirement(key, op, Vec::new());
        }
        let op = match self.next_raw() {
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::NotEquals => Operator::NotEquals,
            Token::Gt => Operator::GreaterThan,
            Token::Lt => Operator::LessThan,
            t => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    t.literal()
                ));
            }
        };
        let values = match op {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => self.exact_value()?,
        };
        new_requirement(key, op, values.into_iter().collect())
    }

    fn value_set(&mut self) -> Result<BTreeSet<String>, String> {
        let t = self.next_value();
        if t != Token::Open {
            return Err(format!("found '{}' expected: '('", t.literal()));
        }
        match self.peek_value() {
            Token::Ident(_) | Token::Comma => {
                let set = self.identifier_list()?;
                let t = self.next_value();
                if t != Token::Close {
                    return Err(format!("found '{}', expected: ')'", t.literal()));
                }
                Ok(set)
            }
            Token::Close => {
                self.pos += 1;
                Ok(BTreeSet::from([String::new()]))
            }
            t => Err(format!(
                "found '{}', expected: ',', ')' or identifier",
                t.literal()
            )),
        }
    }

    fn identifier_list(&mut self) -> Result<BTreeSet<String>, String> {
        let mut set = BTreeSet::new();
        loop {
            match self.next_value() {
                Token::Ident(v) => {
                    set.insert(v);
                    match self.peek_value() {
                        Token::Comma => continue,
                        Token::Close => return Ok(set),
                        t => return Err(format!("found '{}', expected: ',' or ')'", t.literal())),
                    }
                }
                Token::Comma => {
                    if set.is_empty() {
                        set.insert(String::new());
                    }
                    match self.peek_value() {
                        Token::Close => {
                            set.insert(String::new());
                            return Ok(set);
                        }
                        Token::Comma => {
                            self.pos += 1;
                            set.insert(String::new());
                        }
                        _ => {}
                    }
                }
                t => {
                    return Err(format!(
                        "found '{}', expected: ',', or identifier",
                        t.literal()
                    ));
                }
            }
        }
    }

    fn exact_value(&mut self) -> Result<BTreeSet<String>, String> {
        if matches!(self.peek_value(), Token::End | Token::Comma) {
            return Ok(BTreeSet::from([String::new()]));
        }
        match self.next_value() {
            Token::Ident(v) => Ok(BTreeSet::from([v])),
            t => Err(format!("found '{}', expected: identifier", t.literal())),
        }
    }
}

fn new_requirement(
    key: String,
    operator: Operator,
    values: Vec<String>,
) -> Result<Requirement, String> {
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => {
            return Err("for 'in', 'notin' operators, values set can't be empty".to_owned());
        }
        Operator::Equals | Operator::DoubleEquals | Operator::NotEquals if values.len() != 1 => {
            return Err("exact-match compatibility requires one single value".to_owned());
        }
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
            return Err("values set must be empty for exists and does not exist".to_owned());
        }
        Operator::GreaterThan | Operator::LessThan => {
            if values.len() != 1 {
                return Err("for 'Gt', 'Lt' operators, exactly one value is required".to_owned());
            }
            if values.iter().any(|v| v.parse::<i64>().is_err()) {
                return Err("for 'Gt', 'Lt' operators, the value must be an integer".to_owned());
            }
        }
        _ => {}
    }
    for (i, v) in values.iter().enumerate() {
        validate_value(i, v)?;
    }
    Ok(Requirement {
        key,
        operator,
        values,
    })
}

const NAME_FMT_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const NAME_REGEX_MSG: &str = "(e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, non-empty.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// RFC 1123 subdomain: lowercase labels of `[a-z0-9]([-a-z0-9]*[a-z0-9])?` joined by dots.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        match (b.first(), b.last()) {
            (Some(f), Some(l)) => {
                (f.is_ascii_lowercase() || f.is_ascii_digit())
                    && (l.is_ascii_lowercase() || l.is_ascii_digit())
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            }
            _ => false,
        }
    })
}

fn validate_key(key: &str) -> Result<(), String> {
    let mut msgs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                msgs.push("prefix part must be non-empty".to_owned());
            } else if prefix.len() > 253 {
                msgs.push("prefix part must be no more than 253 characters".to_owned());
            } else if !is_dns1123_subdomain(prefix) {
                msgs.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_owned());
            }
            *name
        }
        _ => {
            return Err(invalid_field(
                "key",
                key,
                &[format!(
                    "a qualified name {NAME_FMT_MSG} {NAME_REGEX_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
                )],
            ));
        }
    };
    if name.is_empty() {
        msgs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        msgs.push("name part must be no more than 63 characters".to_owned());
    }
    if !name.is_empty() && !is_qualified_name_part(name) {
        msgs.push(format!("name part {NAME_FMT_MSG} {NAME_REGEX_MSG}"));
    }
    if msgs.is_empty() {
        Ok(())
    } else {
        Err(invalid_field("key", key, &msgs))
    }
}

fn validate_value(index: usize, value: &str) -> Result<(), String> {
    let mut msgs = Vec::new();
    if value.len() > 63 {
        msgs.push("must be no more than 63 characters".to_owned());
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        msgs.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_owned());
    }
    if msgs.is_empty() {
        Ok(())
    } else {
        Err(invalid_field(&format!("values[{index}]"), value, &msgs))
    }
}

/// apimachinery's `field.Invalid(...).Error()` shape.
fn invalid_field(path: &str, value: &str, msgs: &[String]) -> String {
    format!(
        "{path}: Invalid value: {}: {}",
        quote(value),
        msgs.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn lease_labels_parse_trim_and_sort() {
        let m = parse_lease_labels(" b = 2 ,a=1").unwrap();
        assert_eq!(m, labels(&[("a", "1"), ("b", "2")]));
        assert_eq!(
            parse_lease_labels("k8s-app=konnectivity-server").unwrap(),
            labels(&[("k8s-app", "konnectivity-server")])
        );
    }

    #[test]
    fn lease_labels_reject_empty_and_malformed_items() {
        for (input, want) in [
            ("", "empty string provided"),
            ("a", "invalid label format: a"),
            ("a=1,b=2=3", "invalid label format: b=2=3"),
            ("a=1,", "invalid label format: "),
        ] {
            assert_eq!(parse_lease_labels(input), Err(want.to_owned()), "{input:?}");
        }
    }

    #[test]
    fn selector_parses_every_operator_and_round_trips() {
        for (input, want) in [
            ("k8s-app=konnectivity-server", "k8s-app=konnectivity-server"),
            ("a==b", "a==b"),
            ("a!=b", "a!=b"),
            ("a in (y, x)", "a in (x,y)"),
            ("a notin (x)", "a notin (x)"),
            ("a", "a"),
            ("!a", "!a"),
            ("a>1", "a>1"),
            ("a<1", "a<1"),
            ("z=1,a=2", "a=2,z=1"),
            ("example.com/app = web , tier", "example.com/app=web,tier"),
            ("a=", "a="),
            ("", ""),
            ("  ", ""),
        ] {
            let sel = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(sel.to_string(), want, "{input}");
        }
    }

    #[test]
    fn selector_matches_label_sets() {
        let l = labels(&[("app", "web"), ("n", "5")]);
        let m = |s: &str| {
            LabelSelector::parse(s)
                .map(|sel| sel.matches(&l))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(m(""));
        assert!(m("app=web"));
        assert!(!m("app=db"));
        assert!(m("app in (db,web)"));
        assert!(m("app notin (db)"));
        assert!(m("other!=x"));
        assert!(m("app,!other"));
        assert!(!m("!app"));
        assert!(m("n>4"));
        assert!(!m("n<4"));
        assert!(!m("app=web,other"));
    }

    #[test]
    fn selector_rejects_invalid_keys_values_and_syntax() {
        let err = LabelSelector::parse("*notavalidlabel*").unwrap_err();
        assert!(err.starts_with("unable to parse requirement: key: Invalid value: \"*notavalidlabel*\": name part must consist of"), "{err}");
        for bad in [
            "a=b=c",
            "a in x",
            "a in (x",
            "=a",
            "a,",
            "a b",
            "a=*",
            "a/b/c",
            "A/b",
            "a>x",
            "!a=b",
            "a in (x y)",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should fail");
        }
        assert_eq!(
            LabelSelector::parse("a,").unwrap_err(),
            "found '', expected: identifier after ','"
        );
    }
}
