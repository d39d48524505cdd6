//! Lexer and parser: contract text to an untyped tree with source spans.
//!
//! The grammar, from the loosest binding to the tightest:
//!
//! ```text
//! contract := clause ((NEWLINE | ';') clause)*
//! clause   := [label ':'] expr
//! expr     := or ['=>' expr]                      (right-associative)
//! or       := and ('or' and)*
//! and      := not ('and' not)*
//! not      := 'not' not | cmp
//! cmp      := sum [('<=' | '<' | '>=' | '>' | '==' | '!=') sum]   (no chains)
//! sum      := product (('+' | '-') product)*
//! product  := unary ('*' unary)*
//! unary    := '-' unary | atom
//! atom     := INT | VARIABLE | 'true' | 'false' | '(' expr ')'
//!           | 'if' expr 'then' expr 'else' expr
//! ```
//!
//! A newline ends a clause unless the expression obviously goes on: inside
//! parentheses, after an operator or keyword that needs a right-hand side, or
//! before a line that starts with an infix operator (other than `-`). `#`
//! starts a comment that runs to the end of the line.
//!
//! Types (number or condition), linearity and overflow are checked later, in
//! [`crate::ast`], on the tree built here.
use crate::ast::{CmpOp, Var};

/// Largest contract text accepted, in bytes. Contracts are small; the limit
/// keeps a hostile `describe` output from costing the host memory or time.
pub const CONTRACT_TEXT_BYTES_MAX: usize = 64 * 1024;

/// Deepest nesting accepted, counted both in parser recursion and in the
/// height of the built tree (long `a + a + a ...` chains are deep too). The
/// evaluator, printer and Z3 encoder recurse over the tree, so this bounds
/// their stack use.
pub const EXPRESSION_DEPTH_MAX: u32 = 100;

/// A byte range in the contract text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    fn to(self, other: Span) -> Span {
        Span {
            start: self.start,
            end: other.end,
        }
    }
}

/// A contract that does not parse or type-check: where, what, and the line
/// with a caret under the culprit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}\n{excerpt}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
    /// The offending line and a caret line under the offending text.
    pub excerpt: String,
}

impl ParseError {
    pub(crate) fn at(src: &str, span: Span, message: impl Into<String>) -> ParseError {
        let mut start = span.start.min(src.len());
        // Spans come from the lexer and sit on character boundaries; the
        // size-limit error points at a byte count, which may not.
        while !src.is_char_boundary(start) {
            start -= 1;
        }
        let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
        let line_text = &src[line_start..line_end];
        let line = src[..start].matches('\n').count() + 1;
        let column = src[line_start..start].chars().count() + 1;
        let mut end = span.end.clamp(start, line_end);
        while !src.is_char_boundary(end) {
            end -= 1;
        }
        let width = src[start..end].chars().count().max(1);
        let excerpt = format!(
            "  {}\n  {}{}",
            line_text.trim_end(),
            " ".repeat(column - 1),
            "^".repeat(width)
        );
        ParseError {
            line,
            column,
            message: message.into(),
            excerpt,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Int(u64),
    Ident(String),
    Plus,
    Minus,
    Star,
    LParen,
    RParen,
    Colon,
    Semi,
    Newline,
    Cmp(CmpOp),
    Implies,
    Eof,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    span: Span,
}

fn describe(tok: &Tok, src: &str, span: Span) -> String {
    match tok {
        Tok::Newline => "the end of the line".to_string(),
        Tok::Eof => "the end of the contract".to_string(),
        _ => format!("`{}`", &src[span.start..span.end]),
    }
}

const KEYWORDS: [&str; 8] = ["and", "or", "not", "if", "then", "else", "true", "false"];

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let single = |tok: Tok| Token {
            tok,
            span: Span {
                start,
                end: start + 1,
            },
        };
        let double = |tok: Tok| Token {
            tok,
            span: Span {
                start,
                end: start + 2,
            },
        };
        let next = bytes.get(i + 1).copied();
        match c {
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'\n' => {
                tokens.push(single(Tok::Newline));
                i += 1;
            }
            b'+' => {
                tokens.push(single(Tok::Plus));
                i += 1;
            }
            b'-' => {
                tokens.push(single(Tok::Minus));
                i += 1;
            }
            b'*' => {
                tokens.push(single(Tok::Star));
                i += 1;
            }
            b'(' => {
                tokens.push(single(Tok::LParen));
                i += 1;
            }
            b')' => {
                tokens.push(single(Tok::RParen));
                i += 1;
            }
            b':' => {
                tokens.push(single(Tok::Colon));
                i += 1;
            }
            b';' => {
                tokens.push(single(Tok::Semi));
                i += 1;
            }
            b'<' if next == Some(b'=') => {
                tokens.push(double(Tok::Cmp(CmpOp::Le)));
                i += 2;
            }
            b'<' => {
                tokens.push(single(Tok::Cmp(CmpOp::Lt)));
                i += 1;
            }
            b'>' if next == Some(b'=') => {
                tokens.push(double(Tok::Cmp(CmpOp::Ge)));
                i += 2;
            }
            b'>' => {
                tokens.push(single(Tok::Cmp(CmpOp::Gt)));
                i += 1;
            }
            b'=' if next == Some(b'=') => {
                tokens.push(double(Tok::Cmp(CmpOp::Eq)));
                i += 2;
            }
            b'=' if next == Some(b'>') => {
                tokens.push(double(Tok::Implies));
                i += 2;
            }
            b'=' => return Err(ParseError::at(
                src,
                Span { start, end: i + 1 },
                "a single `=` is not an operator: write `==` for equality or `=>` for implication",
            )),
            b'!' if next == Some(b'=') => {
                tokens.push(double(Tok::Cmp(CmpOp::Ne)));
                i += 2;
            }
            b'0'..=b'9' => {
                let mut value: Option<u64> = Some(0);
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                    if bytes[i] != b'_' {
                        value = value
                            .and_then(|v| v.checked_mul(10))
                            .and_then(|v| v.checked_add(u64::from(bytes[i] - b'0')));
                    }
                    i += 1;
                }
                let span = Span { start, end: i };
                if i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'.') {
                    let mut end = i;
                    while end < bytes.len()
                        && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'.')
                    {
                        end += 1;
                    }
                    return Err(ParseError::at(
                        src,
                        Span { start, end },
                        "not a number: integers are digits with optional `_` separators, like 2_000_000",
                    ));
                }
                let Some(value) = value else {
                    return Err(ParseError::at(
                        src,
                        span,
                        format!("integer literal is too large: the largest is {}", u64::MAX),
                    ));
                };
                tokens.push(Token {
                    tok: Tok::Int(value),
                    span,
                });
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                tokens.push(Token {
                    tok: Tok::Ident(src[start..i].to_string()),
                    span: Span { start, end: i },
                });
            }
            _ => {
                let ch = src[start..].chars().next().unwrap_or('?');
                return Err(ParseError::at(
                    src,
                    Span {
                        start,
                        end: start + ch.len_utf8(),
                    },
                    format!("unexpected character `{ch}`"),
                ));
            }
        }
    }
    tokens.push(Token {
        tok: Tok::Eof,
        span: Span {
            start: src.len(),
            end: src.len(),
        },
    });
    Ok(continue_lines(tokens))
}

/// Drops the newlines that do not end a clause (see the module docs).
fn continue_lines(tokens: Vec<Token>) -> Vec<Token> {
    let needs_more = |tok: &Tok| match tok {
        Tok::Plus
        | Tok::Minus
        | Tok::Star
        | Tok::LParen
        | Tok::Colon
        | Tok::Cmp(_)
        | Tok::Implies => true,
        Tok::Ident(word) => matches!(word.as_str(), "and" | "or" | "not" | "if" | "then" | "else"),
        _ => false,
    };
    let continues = |tok: &Tok| match tok {
        Tok::Plus | Tok::Star | Tok::RParen | Tok::Cmp(_) | Tok::Implies => true,
        Tok::Ident(word) => matches!(word.as_str(), "and" | "or" | "then" | "else"),
        _ => false,
    };
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut depth: usize = 0;
    for (index, token) in tokens.iter().enumerate() {
        match token.tok {
            Tok::LParen => depth += 1,
            Tok::RParen => depth = depth.saturating_sub(1),
            Tok::Newline => {
                let previous = out.last().map(|t| &t.tok);
                let following = tokens[index + 1..]
                    .iter()
                    .map(|t| &t.tok)
                    .find(|t| **t != Tok::Newline);
                if depth > 0 || previous.is_some_and(needs_more) || following.is_some_and(continues)
                {
                    continue;
                }
            }
            _ => {}
        }
        out.push(token.clone());
    }
    out
}

/// Binary operators of the untyped tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Cmp(CmpOp),
    And,
    Or,
    Implies,
}

#[derive(Clone, Debug)]
pub(crate) enum NodeKind {
    Int(u64),
    Bool(bool),
    Var(Var),
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Ite(Box<Node>, Box<Node>, Box<Node>),
}

/// A node of the untyped tree. `op` is the span of the operator token, for
/// messages that are about the operator (non-linear `*`).
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub kind: NodeKind,
    pub span: Span,
    pub op: Span,
    height: u32,
}

#[derive(Debug)]
pub(crate) struct RawClause {
    pub label: Option<(String, Span)>,
    pub body: Node,
    pub span: Span,
}

struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    pos: usize,
    depth: u32,
}

pub(crate) fn parse(src: &str) -> Result<Vec<RawClause>, ParseError> {
    if src.len() > CONTRACT_TEXT_BYTES_MAX {
        return Err(ParseError::at(
            src,
            Span {
                start: CONTRACT_TEXT_BYTES_MAX,
                end: CONTRACT_TEXT_BYTES_MAX,
            },
            format!(
                "the contract is {} bytes; the limit is {CONTRACT_TEXT_BYTES_MAX} bytes",
                src.len()
            ),
        ));
    }
    let tokens = lex(src)?;
    let mut parser = Parser {
        src,
        tokens,
        pos: 0,
        depth: 0,
    };
    parser.contract()
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos]
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        let last = self.tokens.len() - 1;
        &self.tokens[(self.pos + ahead).min(last)].tok
    }

    fn bump(&mut self) -> Token {
        let token = self.tokens[self.pos].clone();
        if token.tok != Tok::Eof {
            self.pos += 1;
        }
        token
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(w) if w == word)
    }

    fn error_here(&self, expected: &str) -> ParseError {
        let token = self.peek();
        let found = describe(&token.tok, self.src, token.span);
        ParseError::at(
            self.src,
            token.span,
            format!("expected {expected}, found {found}"),
        )
    }

    fn node(&self, kind: NodeKind, span: Span, op: Span) -> Result<Node, ParseError> {
        let height = 1 + match &kind {
            NodeKind::Int(_) | NodeKind::Bool(_) | NodeKind::Var(_) => 0,
            NodeKind::Neg(inner) | NodeKind::Not(inner) => inner.height,
            NodeKind::Bin(_, lhs, rhs) => lhs.height.max(rhs.height),
            NodeKind::Ite(cond, then, otherwise) => {
                cond.height.max(then.height).max(otherwise.height)
            }
        };
        if height > EXPRESSION_DEPTH_MAX {
            return Err(ParseError::at(
                self.src,
                op,
                format!(
                    "the expression is nested more than {EXPRESSION_DEPTH_MAX} levels deep; split it into several clauses"
                ),
            ));
        }
        Ok(Node {
            kind,
            span,
            op,
            height,
        })
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > EXPRESSION_DEPTH_MAX {
            let span = self.peek().span;
            return Err(ParseError::at(
                self.src,
                span,
                format!(
                    "the expression is nested more than {EXPRESSION_DEPTH_MAX} levels deep; split it into several clauses"
                ),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn contract(&mut self) -> Result<Vec<RawClause>, ParseError> {
        let mut clauses = Vec::new();
        loop {
            while matches!(self.peek().tok, Tok::Newline | Tok::Semi) {
                self.bump();
            }
            if self.peek().tok == Tok::Eof {
                break;
            }
            clauses.push(self.clause()?);
            match self.peek().tok {
                Tok::Newline | Tok::Semi | Tok::Eof => {}
                _ => {
                    return Err(self.error_here("the end of the clause (a new line or `;`)"));
                }
            }
        }
        if clauses.is_empty() {
            return Err(ParseError::at(
                self.src,
                Span {
                    start: self.src.len(),
                    end: self.src.len(),
                },
                "the contract has no clauses; write at least one, like `fuel <= 1_000_000`",
            ));
        }
        Ok(clauses)
    }

    fn clause(&mut self) -> Result<RawClause, ParseError> {
        let start = self.peek().span;
        let mut label = None;
        if let (Tok::Ident(word), Tok::Colon) = (&self.peek().tok, self.peek_at(1)) {
            let word = word.clone();
            if Var::from_name(&word).is_some() || KEYWORDS.contains(&word.as_str()) {
                return Err(ParseError::at(
                    self.src,
                    start,
                    format!(
                        "`{word}` is a reserved word and cannot label a clause; pick another label"
                    ),
                ));
            }
            self.bump();
            self.bump();
            label = Some((word, start));
        }
        let body = self.expr()?;
        let span = start.to(body.span);
        Ok(RawClause { label, body, span })
    }

    fn expr(&mut self) -> Result<Node, ParseError> {
        self.enter()?;
        let lhs = self.or()?;
        let result = if self.peek().tok == Tok::Implies {
            let op = self.bump().span;
            let rhs = self.expr()?;
            self.binary(BinOp::Implies, op, lhs, rhs)
        } else {
            Ok(lhs)
        };
        self.leave();
        result
    }

    fn binary(&self, op: BinOp, op_span: Span, lhs: Node, rhs: Node) -> Result<Node, ParseError> {
        let span = lhs.span.to(rhs.span);
        self.node(
            NodeKind::Bin(op, Box::new(lhs), Box::new(rhs)),
            span,
            op_span,
        )
    }

    fn or(&mut self) -> Result<Node, ParseError> {
        let mut lhs = self.and()?;
        while self.is_keyword("or") {
            let op = self.bump().span;
            let rhs = self.and()?;
            lhs = self.binary(BinOp::Or, op, lhs, rhs)?;
        }
        Ok(lhs)
    }

    fn and(&mut self) -> Result<Node, ParseError> {
        let mut lhs = self.not()?;
        while self.is_keyword("and") {
            let op = self.bump().span;
            let rhs = self.not()?;
            lhs = self.binary(BinOp::And, op, lhs, rhs)?;
        }
        Ok(lhs)
    }

    fn not(&mut self) -> Result<Node, ParseError> {
        if self.is_keyword("not") {
            self.enter()?;
            let op = self.bump().span;
            let inner = self.not()?;
            self.leave();
            let span = op.to(inner.span);
            return self.node(NodeKind::Not(Box::new(inner)), span, op);
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Node, ParseError> {
        let lhs = self.sum()?;
        let Tok::Cmp(op) = self.peek().tok else {
            return Ok(lhs);
        };
        let op_span = self.bump().span;
        let rhs = self.sum()?;
        if let Tok::Cmp(_) = self.peek().tok {
            let span = self.peek().span;
            return Err(ParseError::at(
                self.src,
                span,
                "comparisons do not chain: write `a <= b and b <= c` instead of `a <= b <= c`",
            ));
        }
        self.binary(BinOp::Cmp(op), op_span, lhs, rhs)
    }

    fn sum(&mut self) -> Result<Node, ParseError> {
        let mut lhs = self.product()?;
        loop {
            let op = match self.peek().tok {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(lhs),
            };
            let op_span = self.bump().span;
            let rhs = self.product()?;
            lhs = self.binary(op, op_span, lhs, rhs)?;
        }
    }

    fn product(&mut self) -> Result<Node, ParseError> {
        let mut lhs = self.unary()?;
        while self.peek().tok == Tok::Star {
            let op_span = self.bump().span;
            let rhs = self.unary()?;
            lhs = self.binary(BinOp::Mul, op_span, lhs, rhs)?;
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        if self.peek().tok == Tok::Minus {
            self.enter()?;
            let op = self.bump().span;
            let inner = self.unary()?;
            self.leave();
            let span = op.to(inner.span);
            return self.node(NodeKind::Neg(Box::new(inner)), span, op);
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Node, ParseError> {
        let token = self.peek().clone();
        match &token.tok {
            Tok::Int(value) => {
                self.bump();
                self.node(NodeKind::Int(*value), token.span, token.span)
            }
            Tok::LParen => {
                self.bump();
                let inner = self.expr()?;
                if self.peek().tok != Tok::RParen {
                    return Err(self.error_here("`)` to close the `(` opened before"));
                }
                let close = self.bump().span;
                Ok(Node {
                    span: token.span.to(close),
                    ..inner
                })
            }
            Tok::Ident(word) => match word.as_str() {
                "true" | "false" => {
                    self.bump();
                    self.node(NodeKind::Bool(word == "true"), token.span, token.span)
                }
                "if" => {
                    self.bump();
                    let cond = self.expr()?;
                    if !self.is_keyword("then") {
                        return Err(self.error_here("`then` after the condition of `if`"));
                    }
                    self.bump();
                    let then = self.expr()?;
                    if !self.is_keyword("else") {
                        return Err(self.error_here("`else`: every `if` needs one"));
                    }
                    self.bump();
                    let otherwise = self.expr()?;
                    let span = token.span.to(otherwise.span);
                    self.node(
                        NodeKind::Ite(Box::new(cond), Box::new(then), Box::new(otherwise)),
                        span,
                        token.span,
                    )
                }
                _ => match Var::from_name(word) {
                    Some(var) => {
                        self.bump();
                        self.node(NodeKind::Var(var), token.span, token.span)
                    }
                    None if KEYWORDS.contains(&word.as_str()) => {
                        Err(self.error_here("a number, a variable, `(` or `if`"))
                    }
                    None => Err(ParseError::at(
                        self.src,
                        token.span,
                        format!(
                            "unknown variable `{word}`; the variables are {}",
                            Var::ALL.map(|v| v.name()).join(", ")
                        ),
                    )),
                },
            },
            _ => Err(self.error_here("a number, a variable, `(` or `if`")),
        }
    }
}
