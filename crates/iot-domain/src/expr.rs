//! The alert rule language: a small expression language over one reading,
//! parsed into an AST and evaluated in memory. It is never turned into SQL.
//!
//! ```text
//! sensor_name == "temperature" AND value > 100
//! sensor_name == "battery" AND value < 20 AND NOT device_type == "mains_powered"
//! (value - 32) * 5 / 9 >= 40 OR quality == "bad"
//! ```
//!
//! Grammar (keywords are case-insensitive; `&&`, `||`, `!` also work):
//!
//! ```text
//! expr    = and { OR and }
//! and     = not { AND not }
//! not     = NOT not | cmp
//! cmp     = sum [ ("==" | "!=" | "<" | "<=" | ">" | ">=") sum ]
//! sum     = product { ("+" | "-") product }
//! product = unary { ("*" | "/") unary }
//! unary   = "-" unary | atom
//! atom    = number | "string" | true | false | variable | "(" expr ")"
//! ```
//!
//! Variables: `value` (number), `sensor_name`, `unit`, `quality`,
//! `device_id`, `device_type`, `location` (strings; a missing unit,
//! quality or location is ""). Types are checked when a rule is parsed, and
//! a rule must be a condition (true or false). Errors name the column.

use std::fmt;

/// A parse or type error at a 1-based column of the rule's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Value,
    SensorName,
    Unit,
    Quality,
    DeviceId,
    DeviceType,
    Location,
}

impl Var {
    const ALL: [(&'static str, Var); 7] = [
        ("value", Var::Value),
        ("sensor_name", Var::SensorName),
        ("unit", Var::Unit),
        ("quality", Var::Quality),
        ("device_id", Var::DeviceId),
        ("device_type", Var::DeviceType),
        ("location", Var::Location),
    ];

    fn ty(self) -> Ty {
        if self == Var::Value { Ty::Num } else { Ty::Str }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// The AST.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    Str(String),
    Bool(bool),
    Var(Var),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    Arith(Arith, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Num,
    Str,
    Bool,
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ty::Num => "a number",
            Ty::Str => "a string",
            Ty::Bool => "a condition",
        })
    }
}

/// What a rule sees of one reading.
#[derive(Debug, Clone, Default)]
pub struct Reading<'a> {
    pub value: f64,
    pub sensor_name: &'a str,
    pub unit: &'a str,
    pub quality: &'a str,
    pub device_id: &'a str,
    pub device_type: &'a str,
    pub location: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
enum Val<'a> {
    Num(f64),
    Str(&'a str),
    Bool(bool),
}

/// The longest rule text accepted.
pub const MAX_LEN: usize = 2000;
/// The deepest nesting accepted (parentheses, NOT, unary minus).
const MAX_DEPTH: usize = 64;

/// Parses and type-checks a condition.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    if src.len() > MAX_LEN {
        return Err(ParseError {
            column: MAX_LEN,
            message: format!("a rule is at most {MAX_LEN} characters"),
        });
    }
    let tokens = lex(src)?;
    let mut p = Parser {
        tokens,
        at: 0,
        depth: 0,
        end: src.chars().count() + 1,
    };
    let (e, ty, col) = p.or()?;
    if let Some((t, c)) = p.tokens.get(p.at) {
        return Err(err(
            *c,
            format!("unexpected {t} after a complete condition"),
        ));
    }
    if ty != Ty::Bool {
        return Err(err(col, format!("a rule must be a condition, not {ty}")));
    }
    Ok(e)
}

/// Whether the condition holds for `r`. Arithmetic that is not finite
/// (division by zero) makes its comparison false.
pub fn eval(e: &Expr, r: &Reading<'_>) -> bool {
    matches!(value(e, r), Val::Bool(true))
}

/// The sensor a condition is about: `sensor_name == "x"` (either way
/// round) as one of the conditions ANDed at its top. A reading of any
/// other sensor can never satisfy it, so the engine does not evaluate it
/// for them.
pub fn required_sensor(e: &Expr) -> Option<&str> {
    match e {
        Expr::And(a, b) => required_sensor(a).or_else(|| required_sensor(b)),
        Expr::Cmp(Cmp::Eq, a, b) => match (&**a, &**b) {
            (Expr::Var(Var::SensorName), Expr::Str(s))
            | (Expr::Str(s), Expr::Var(Var::SensorName)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// The condition without the `sensor_name == "x"` conjunct that
/// `required_sensor` found: equivalent to `e` for readings of that sensor
/// (the engine evaluates it only for them), one comparison cheaper.
pub fn without_required_sensor(e: &Expr) -> Expr {
    fn strip(e: &Expr) -> Option<Expr> {
        match e {
            Expr::And(a, b) => match strip(a) {
                Some(a2) => Some(and(a2, (**b).clone())),
                None => strip(b).map(|b2| and((**a).clone(), b2)),
            },
            Expr::Cmp(Cmp::Eq, ..) if required_sensor(e).is_some() => Some(Expr::Bool(true)),
            _ => None,
        }
    }
    fn and(a: Expr, b: Expr) -> Expr {
        match (a, b) {
            (Expr::Bool(true), x) | (x, Expr::Bool(true)) => x,
            (a, b) => Expr::And(Box::new(a), Box::new(b)),
        }
    }
    strip(e).unwrap_or_else(|| e.clone())
}

fn value<'a>(e: &'a Expr, r: &Reading<'a>) -> Val<'a> {
    match e {
        Expr::Num(n) => Val::Num(*n),
        Expr::Str(s) => Val::Str(s),
        Expr::Bool(b) => Val::Bool(*b),
        Expr::Var(v) => match v {
            Var::Value => Val::Num(r.value),
            Var::SensorName => Val::Str(r.sensor_name),
            Var::Unit => Val::Str(r.unit),
            Var::Quality => Val::Str(r.quality),
            Var::DeviceId => Val::Str(r.device_id),
            Var::DeviceType => Val::Str(r.device_type),
            Var::Location => Val::Str(r.location),
        },
        Expr::Neg(a) => Val::Num(-num(value(a, r))),
        Expr::Not(a) => Val::Bool(!matches!(value(a, r), Val::Bool(true))),
        Expr::And(a, b) => Val::Bool(eval(a, r) && eval(b, r)),
        Expr::Or(a, b) => Val::Bool(eval(a, r) || eval(b, r)),
        Expr::Arith(op, a, b) => {
            let (x, y) = (num(value(a, r)), num(value(b, r)));
            Val::Num(match op {
                Arith::Add => x + y,
                Arith::Sub => x - y,
                Arith::Mul => x * y,
                Arith::Div => x / y,
            })
        }
        Expr::Cmp(op, a, b) => {
            let ord = match (value(a, r), value(b, r)) {
                (Val::Num(x), Val::Num(y)) if x.is_finite() && y.is_finite() => x.partial_cmp(&y),
                (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
                (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(&y)),
                _ => None,
            };
            use std::cmp::Ordering::*;
            Val::Bool(match (op, ord) {
                (_, None) => false,
                (Cmp::Eq, Some(o)) => o == Equal,
                (Cmp::Ne, Some(o)) => o != Equal,
                (Cmp::Lt, Some(o)) => o == Less,
                (Cmp::Le, Some(o)) => o != Greater,
                (Cmp::Gt, Some(o)) => o == Greater,
                (Cmp::Ge, Some(o)) => o != Less,
            })
        }
    }
}

fn num(v: Val<'_>) -> f64 {
    match v {
        Val::Num(n) => n,
        _ => f64::NAN,
    }
}

// ----------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Ident(s) => write!(f, "{s:?}"),
            Tok::Op(o) => write!(f, "{o:?}"),
            Tok::LParen => f.write_str("\"(\""),
            Tok::RParen => f.write_str("\")\""),
        }
    }
}

fn err(column: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        column,
        message: message.into(),
    }
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n: f64 = text
                .parse()
                .map_err(|_| err(col, format!("{text:?} is not a number")))?;
            out.push((Tok::Num(n), col));
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), col));
            continue;
        }
        if c == '"' || c == '\'' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(err(col, "string not closed")),
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some(&e) if e == quote || e == '\\' => s.push(e),
                            _ => return Err(err(i + 1, "only \\\" , \\' and \\\\ are escapes")),
                        }
                        i += 2;
                    }
                    Some(&ch) if ch == quote => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push((Tok::Str(s), col));
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let op2 = ["==", "!=", "<=", ">=", "&&", "||"]
            .into_iter()
            .find(|o| *o == two);
        if let Some(o) = op2 {
            out.push((Tok::Op(o), col));
            i += 2;
            continue;
        }
        let tok = match c {
            '<' => Tok::Op("<"),
            '>' => Tok::Op(">"),
            '+' => Tok::Op("+"),
            '-' => Tok::Op("-"),
            '*' => Tok::Op("*"),
            '/' => Tok::Op("/"),
            '!' => Tok::Op("!"),
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '=' => return Err(err(col, "use == to compare")),
            _ => return Err(err(col, format!("unexpected character {c:?}"))),
        };
        out.push((tok, col));
        i += 1;
    }
    Ok(out)
}

// ---------------------------------------------------------------- parser

struct Parser {
    tokens: Vec<(Tok, usize)>,
    at: usize,
    depth: usize,
    /// The column just past the text (for "expected ... at the end").
    end: usize,
}

type Typed = (Expr, Ty, usize);

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn col(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |(_, c)| *c)
    }

    fn keyword(&self, words: &[&str]) -> bool {
        match self.peek() {
            Some(Tok::Ident(s)) => words.iter().any(|w| s.eq_ignore_ascii_case(w)),
            Some(Tok::Op(o)) => words.contains(o),
            _ => false,
        }
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err(self.col(), "nested too deeply"));
        }
        Ok(())
    }

    fn want(&self, got: &Typed, ty: Ty, what: &str) -> Result<(), ParseError> {
        if got.1 == ty {
            Ok(())
        } else {
            Err(err(got.2, format!("{what} needs {ty}, not {}", got.1)))
        }
    }

    fn or(&mut self) -> Result<Typed, ParseError> {
        let mut left = self.and()?;
        while self.keyword(&["or", "||"]) {
            self.at += 1;
            let right = self.and()?;
            self.want(&left, Ty::Bool, "OR")?;
            self.want(&right, Ty::Bool, "OR")?;
            left = (
                Expr::Or(Box::new(left.0), Box::new(right.0)),
                Ty::Bool,
                left.2,
            );
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Typed, ParseError> {
        let mut left = self.not()?;
        while self.keyword(&["and", "&&"]) {
            self.at += 1;
            let right = self.not()?;
            self.want(&left, Ty::Bool, "AND")?;
            self.want(&right, Ty::Bool, "AND")?;
            left = (
                Expr::And(Box::new(left.0), Box::new(right.0)),
                Ty::Bool,
                left.2,
            );
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Typed, ParseError> {
        if self.keyword(&["not", "!"]) {
            let col = self.col();
            self.at += 1;
            self.deeper()?;
            let inner = self.not()?;
            self.depth -= 1;
            self.want(&inner, Ty::Bool, "NOT")?;
            return Ok((Expr::Not(Box::new(inner.0)), Ty::Bool, col));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Typed, ParseError> {
        let left = self.sum()?;
        let op = match self.peek() {
            Some(Tok::Op("==")) => Cmp::Eq,
            Some(Tok::Op("!=")) => Cmp::Ne,
            Some(Tok::Op("<")) => Cmp::Lt,
            Some(Tok::Op("<=")) => Cmp::Le,
            Some(Tok::Op(">")) => Cmp::Gt,
            Some(Tok::Op(">=")) => Cmp::Ge,
            _ => return Ok(left),
        };
        let op_col = self.col();
        self.at += 1;
        let right = self.sum()?;
        if left.1 != right.1 {
            return Err(err(
                op_col,
                format!("cannot compare {} with {}", left.1, right.1),
            ));
        }
        if left.1 != Ty::Num && !matches!(op, Cmp::Eq | Cmp::Ne) {
            return Err(err(
                op_col,
                format!("only numbers are ordered, not {}", left.1),
            ));
        }
        if matches!(
            self.peek(),
            Some(Tok::Op("==" | "!=" | "<" | "<=" | ">" | ">="))
        ) {
            return Err(err(
                self.col(),
                "comparisons do not chain: join them with AND",
            ));
        }
        Ok((
            Expr::Cmp(op, Box::new(left.0), Box::new(right.0)),
            Ty::Bool,
            left.2,
        ))
    }

    fn sum(&mut self) -> Result<Typed, ParseError> {
        self.arithmetic(&[("+", Arith::Add), ("-", Arith::Sub)], Self::product)
    }

    fn product(&mut self) -> Result<Typed, ParseError> {
        self.arithmetic(&[("*", Arith::Mul), ("/", Arith::Div)], Self::unary)
    }

    /// One left-associative level of arithmetic: `next { op next }`.
    fn arithmetic(
        &mut self,
        ops: &[(&str, Arith)],
        next: fn(&mut Self) -> Result<Typed, ParseError>,
    ) -> Result<Typed, ParseError> {
        let mut left = next(self)?;
        loop {
            let Some(op) = ops
                .iter()
                .find(|(o, _)| matches!(self.peek(), Some(Tok::Op(t)) if t == o))
                .map(|(_, a)| *a)
            else {
                return Ok(left);
            };
            self.at += 1;
            let right = next(self)?;
            self.want(&left, Ty::Num, "arithmetic")?;
            self.want(&right, Ty::Num, "arithmetic")?;
            left = (
                Expr::Arith(op, Box::new(left.0), Box::new(right.0)),
                Ty::Num,
                left.2,
            );
        }
    }

    fn unary(&mut self) -> Result<Typed, ParseError> {
        if matches!(self.peek(), Some(Tok::Op("-"))) {
            let col = self.col();
            self.at += 1;
            self.deeper()?;
            let inner = self.unary()?;
            self.depth -= 1;
            self.want(&inner, Ty::Num, "\"-\"")?;
            return Ok((Expr::Neg(Box::new(inner.0)), Ty::Num, col));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Typed, ParseError> {
        let col = self.col();
        let Some((tok, _)) = self.tokens.get(self.at).cloned() else {
            return Err(err(col, "expected a value, a variable or \"(\" at the end"));
        };
        self.at += 1;
        match tok {
            Tok::Num(n) => Ok((Expr::Num(n), Ty::Num, col)),
            Tok::Str(s) => Ok((Expr::Str(s), Ty::Str, col)),
            Tok::Ident(name) => {
                let lower = name.to_ascii_lowercase();
                if lower == "true" || lower == "false" {
                    return Ok((Expr::Bool(lower == "true"), Ty::Bool, col));
                }
                if ["and", "or", "not"].contains(&lower.as_str()) {
                    return Err(err(
                        col,
                        format!("expected a value before {}", name.to_uppercase()),
                    ));
                }
                let var = Var::ALL
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| {
                        let known: Vec<&str> = Var::ALL.iter().map(|(n, _)| *n).collect();
                        err(
                            col,
                            format!("unknown variable {name:?} (known: {})", known.join(", ")),
                        )
                    })?;
                Ok((Expr::Var(var), var.ty(), col))
            }
            Tok::LParen => {
                self.deeper()?;
                let inner = self.or()?;
                self.depth -= 1;
                if !matches!(self.peek(), Some(Tok::RParen)) {
                    return Err(err(
                        self.col(),
                        format!("expected \")\" to close the \"(\" at column {col}"),
                    ));
                }
                self.at += 1;
                Ok((inner.0, inner.1, col))
            }
            other => Err(err(
                col,
                format!("expected a value, a variable or \"(\", not {other}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reading(sensor: &str, value: f64) -> Reading<'_> {
        Reading {
            value,
            sensor_name: sensor,
            device_type: "boiler",
            ..Default::default()
        }
    }

    #[test]
    fn low_battery_and_overheating_rules_parse_and_hold() {
        let high = parse(r#"sensor_name == "temperature" AND value > 100"#).unwrap();
        assert!(eval(&high, &reading("temperature", 101.0)));
        assert!(!eval(&high, &reading("temperature", 100.0)));
        assert!(!eval(&high, &reading("humidity", 101.0)));
        assert_eq!(required_sensor(&high), Some("temperature"));
        assert_eq!(
            without_required_sensor(&high),
            parse("value > 100").unwrap()
        );
        assert_eq!(required_sensor(&parse("value > 1").unwrap()), None);
        let low = parse(r#"sensor_name == 'battery' && value < 20"#).unwrap();
        assert!(eval(&low, &reading("battery", 19.5)));
        let f = parse("(value - 32) * 5 / 9 >= 40 or NOT device_type == \"boiler\"").unwrap();
        assert!(eval(&f, &reading("t", 104.0)));
        assert!(!eval(&f, &reading("t", 103.0)));
        // Division by zero is no match, not a panic.
        assert!(!eval(&parse("value / 0 > 1").unwrap(), &reading("t", 1.0)));
        assert!(eval(&parse("-value < -1").unwrap(), &reading("t", 2.0)));
    }

    #[test]
    fn errors_point_at_the_column() {
        let cases = [
            ("value > ", 9, "expected a value"),
            ("value >> 3", 8, "expected a value"),
            ("valu > 3", 1, "unknown variable \"valu\""),
            ("value = 3", 7, "use =="),
            ("sensor_name > \"a\"", 13, "only numbers are ordered"),
            ("value > \"x\"", 7, "cannot compare a number with a string"),
            ("value + 1", 1, "must be a condition"),
            ("(value > 1", 11, "expected \")\""),
            ("value > 1 value", 11, "unexpected"),
            ("1 < value < 3", 11, "do not chain"),
            ("\"open", 1, "not closed"),
            ("value > 1 AND 3", 15, "AND needs a condition"),
            ("value # 3", 7, "unexpected character"),
        ];
        for (src, column, msg) in cases {
            let e = parse(src).unwrap_err();
            assert_eq!(e.column, column, "{src}: {e}");
            assert!(e.message.contains(msg), "{src}: {e}");
        }
        let deep = format!("{}value > 1{}", "(".repeat(100), ")".repeat(100));
        assert!(
            parse(&deep)
                .unwrap_err()
                .message
                .contains("nested too deeply")
        );
        assert!(parse(&"x".repeat(MAX_LEN + 1)).is_err());
    }

    proptest! {
        // Arbitrary text never panics the parser; what parses evaluates.
        #[test]
        fn arbitrary_text_never_panics(src in "[ -~]{0,60}") {
            if let Ok(e) = parse(&src) {
                let _ = eval(&e, &reading("temperature", 42.0));
            }
        }

        // A condition that names its sensor never holds for another one.
        #[test]
        fn the_required_sensor_is_required(
            atoms in proptest::collection::vec(0usize..7, 1..6),
            joins in proptest::collection::vec(prop::bool::ANY, 5),
            sensor in 0usize..3,
            v in -5f64..5.0,
        ) {
            const ATOMS: [&str; 7] = [
                r#"sensor_name == "a""#, r#""b" == sensor_name"#, "value > 1",
                r#"NOT sensor_name == "a""#, r#"sensor_name != "b""#,
                r#"(sensor_name == "c" OR value < 0)"#, "true",
            ];
            let mut src = ATOMS[atoms[0]].to_owned();
            for (i, a) in atoms.iter().enumerate().skip(1) {
                src += if joins[i - 1] { " AND " } else { " OR " };
                src += ATOMS[*a];
            }
            let e = parse(&src).unwrap();
            let name = ["a", "b", "c"][sensor];
            if let Some(s) = required_sensor(&e) {
                if s != name {
                    prop_assert!(!eval(&e, &reading(name, v)), "{src} on {name}");
                } else {
                    // Without the conjunct, the same answer for that sensor.
                    let rest = without_required_sensor(&e);
                    prop_assert_eq!(eval(&rest, &reading(name, v)), eval(&e, &reading(name, v)), "{}", src);
                }
            }
        }

        // A threshold rule agrees with the comparison it spells.
        #[test]
        fn thresholds_agree_with_arithmetic(v in -1e6f64..1e6, t in -1e6f64..1e6) {
            let e = parse(&format!("value > {}", t.abs())).unwrap();
            prop_assert_eq!(eval(&e, &reading("s", v)), v > t.abs());
        }
    }
}
