//! POSIX shell (`/bin/sh -c`, dash semantics) tokenizer and parser that flattens a command line into every simple command it would run.
//!
//! The parser does not execute or expand anything. Each [`Word`] records its literal value when it is fully static
//! (quotes removed, no expansion) and an approximation otherwise. Commands found inside command substitutions,
//! backticks, process substitutions, here-documents with expansions, subshells, groups, loops, `if`/`case` bodies and
//! function bodies all end up in the flat [`Script::commands`] list. Nesting depth and input length are bounded so that
//! hostile input yields a [`ParseError`] instead of a stack overflow.

use std::ops::Range;

/// Maximum nesting depth (subshells, groups, compound commands, substitutions, nested `sh -c`).
pub const MAX_DEPTH: usize = 32;
/// Maximum input length in bytes.
pub const MAX_INPUT: usize = 64 * 1024;

/// One shell word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Word {
    /// Source text of the word, quotes included.
    pub raw: String,
    /// Literal value after quote removal, present only when the word contains no expansion at all.
    pub value: Option<String>,
    /// Literal parts with each expansion kept as its source text (for prefix/substring checks on dynamic words).
    pub approx: String,
    /// Whether any part of the word was quoted or backslash-escaped.
    pub quoted: bool,
    /// Indices in [`Script::commands`] of the commands run by substitutions inside this word.
    pub substitutions: Range<usize>,
    /// Whether the word contains a process substitution `<(…)` or `>(…)`.
    pub process_substitution: bool,
}

impl Word {
    /// A static word with the given literal value.
    pub fn literal(s: &str) -> Word {
        Word {
            raw: s.to_string(),
            value: Some(s.to_string()),
            approx: s.to_string(),
            ..Word::default()
        }
    }

    /// A copy of this word marked as dynamic (its value becomes unknown).
    pub fn to_dynamic(&self) -> Word {
        Word {
            value: None,
            ..self.clone()
        }
    }

    /// Whether the word's literal value is known.
    pub fn is_static(&self) -> bool {
        self.value.is_some()
    }

    /// The literal value when static, else the approximation.
    pub fn text(&self) -> &str {
        self.value.as_deref().unwrap_or(&self.approx)
    }
}

/// A redirection operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirOp {
    /// `<`
    Read,
    /// `>`
    Write,
    /// `>>`
    Append,
    /// `>|`
    Clobber,
    /// `<>`
    ReadWrite,
    /// `<<`
    HereDoc,
    /// `<<-`
    HereDocStrip,
    /// `<<<` (here-string)
    HereString,
    /// `<&`
    DupRead,
    /// `>&`
    DupWrite,
    /// `&>`
    WriteBoth,
    /// `&>>`
    AppendBoth,
}

impl RedirOp {
    fn from_op(op: &str) -> Option<RedirOp> {
        Some(match op {
            "<" => RedirOp::Read,
            ">" => RedirOp::Write,
            ">>" => RedirOp::Append,
            ">|" => RedirOp::Clobber,
            "<>" => RedirOp::ReadWrite,
            "<<" => RedirOp::HereDoc,
            "<<-" => RedirOp::HereDocStrip,
            "<<<" => RedirOp::HereString,
            "<&" => RedirOp::DupRead,
            ">&" => RedirOp::DupWrite,
            "&>" => RedirOp::WriteBoth,
            "&>>" => RedirOp::AppendBoth,
            _ => return None,
        })
    }

    /// The operator as written in the shell.
    pub fn as_str(self) -> &'static str {
        match self {
            RedirOp::Read => "<",
            RedirOp::Write => ">",
            RedirOp::Append => ">>",
            RedirOp::Clobber => ">|",
            RedirOp::ReadWrite => "<>",
            RedirOp::HereDoc => "<<",
            RedirOp::HereDocStrip => "<<-",
            RedirOp::HereString => "<<<",
            RedirOp::DupRead => "<&",
            RedirOp::DupWrite => ">&",
            RedirOp::WriteBoth => "&>",
            RedirOp::AppendBoth => "&>>",
        }
    }
}

/// One redirection: optional fd number, operator and target word (the delimiter for here-documents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Explicit file descriptor (`2>`), if any.
    pub fd: Option<u32>,
    /// The operator.
    pub op: RedirOp,
    /// The target word.
    pub target: Word,
}

impl Redirect {
    /// Whether this redirection opens its target as a file for writing.
    pub fn writes_file(&self) -> bool {
        match self.op {
            RedirOp::Write
            | RedirOp::Append
            | RedirOp::Clobber
            | RedirOp::ReadWrite
            | RedirOp::WriteBoth
            | RedirOp::AppendBoth => true,
            // `>&word` writes to a file unless the word is an fd number or `-`.
            RedirOp::DupWrite => !is_fd_target(&self.target),
            _ => false,
        }
    }

    /// Whether this redirection replaces stdin with a file, here-document or here-string.
    pub fn feeds_stdin(&self) -> bool {
        matches!(self.fd, None | Some(0))
            && matches!(
                self.op,
                RedirOp::Read
                    | RedirOp::ReadWrite
                    | RedirOp::HereDoc
                    | RedirOp::HereDocStrip
                    | RedirOp::HereString
                    | RedirOp::DupRead
            )
    }
}

fn is_fd_target(w: &Word) -> bool {
    match w.value.as_deref() {
        Some(v) => v == "-" || (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit())),
        None => false,
    }
}

/// A simple command: assignments, words and redirections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimpleCommand {
    /// Leading `NAME=value` assignments.
    pub assignments: Vec<Word>,
    /// The command word and its arguments.
    pub words: Vec<Word>,
    /// Redirections written on this command.
    pub redirects: Vec<Redirect>,
    /// Whether stdin comes from an earlier pipeline stage.
    pub stdin_from_pipe: bool,
    /// Indices in [`Script::commands`] covering the earlier pipeline stages feeding this command (an over-approximation).
    pub upstream: Option<Range<usize>>,
}

/// A function definition `name() body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionDef {
    /// The function name.
    pub name: String,
    /// Indices in [`Script::commands`] of the commands in its body.
    pub body: Range<usize>,
}

/// A redirection written on a compound command; it applies to every command in `commands`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRedirect {
    /// Indices in [`Script::commands`] of the commands inside the compound command.
    pub commands: Range<usize>,
    /// The redirection.
    pub redirect: Redirect,
}

/// The flattened parse result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    /// Every simple command anywhere in the tree.
    pub commands: Vec<SimpleCommand>,
    /// Every function definition.
    pub functions: Vec<FunctionDef>,
    /// Redirections on compound commands.
    pub group_redirects: Vec<GroupRedirect>,
}

/// Why a command line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Input longer than [`MAX_INPUT`].
    #[error("the command is longer than {MAX_INPUT} bytes")]
    TooLong,
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("the command nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A NUL byte, which no shell command line can contain.
    #[error("the command contains a NUL byte")]
    Nul,
    /// An unterminated quote, substitution or compound command.
    #[error("unterminated {0}")]
    Unterminated(&'static str),
    /// A token where the grammar does not allow it.
    #[error("syntax error near `{0}`")]
    Unexpected(String),
}

/// Parse a command line.
pub fn parse(src: &str) -> Result<Script, ParseError> {
    parse_at_depth(src, 0)
}

/// Parse a command line that is itself nested `depth` levels deep (e.g. the string of `sh -c`).
pub fn parse_at_depth(src: &str, depth: usize) -> Result<Script, ParseError> {
    if src.len() > MAX_INPUT {
        return Err(ParseError::TooLong);
    }
    if src.contains('\0') {
        return Err(ParseError::Nul);
    }
    if depth > MAX_DEPTH {
        return Err(ParseError::TooDeep);
    }
    let mut out = Script::default();
    let mut parser = Parser::new(src, depth, &mut out);
    parser.parse_program()?;
    Ok(out)
}

const OPS: [&str; 23] = [
    ";;&", "<<-", "<<<", "&>>", "&&", "||", ";;", ";&", "|&", ">>", ">|", ">&", "<<", "<>", "<&",
    "&>", "<", ">", "|", "&", ";", "(", ")",
];

const RESERVED: [&str; 18] = [
    "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until", "for",
    "in", "{", "}", "!", "function", "[[",
];

#[derive(Debug)]
enum Tok {
    Word(Word),
    IoNum(u32),
    Op(&'static str),
    Newline,
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word(Option<&'static str>),
    IoNum,
    Op(&'static str),
    Newline,
    Eof,
}

fn reserved(w: &Word) -> Option<&'static str> {
    if w.quoted {
        return None;
    }
    let v = w.value.as_deref()?;
    RESERVED.iter().copied().find(|r| *r == v)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => w.raw.clone(),
        Tok::IoNum(n) => n.to_string(),
        Tok::Op(o) => (*o).to_string(),
        Tok::Newline => "newline".to_string(),
        Tok::Eof => "end of input".to_string(),
    }
}

fn is_redirect_op(op: &str) -> bool {
    RedirOp::from_op(op).is_some()
}

/// Remove quoting from a here-document delimiter.
fn unquote(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '\'' | '"' => {}
            _ => out.push(c),
        }
    }
    out
}

#[derive(Default)]
struct Builder {
    value: String,
    approx: String,
    dynamic: bool,
    quoted: bool,
    procsub: bool,
    brace_open: bool,
    brace_sep: bool,
}

impl Builder {
    fn push(&mut self, c: char) {
        self.value.push(c);
        self.approx.push(c);
    }

    fn push_dynamic(&mut self, raw: &str) {
        self.approx.push_str(raw);
        self.dynamic = true;
    }
}

struct Pending {
    delim: String,
    strip_tabs: bool,
    expand: bool,
}

struct Parser<'o> {
    src: Vec<char>,
    pos: usize,
    depth: usize,
    peeked: Option<Tok>,
    pending: Vec<Pending>,
    out: &'o mut Script,
}

impl<'o> Parser<'o> {
    fn new(src: &str, depth: usize, out: &'o mut Script) -> Parser<'o> {
        Parser {
            src: src.chars().collect(),
            pos: 0,
            depth,
            peeked: None,
            pending: Vec::new(),
            out,
        }
    }

    fn ch(&self, off: usize) -> Option<char> {
        self.src.get(self.pos.saturating_add(off)).copied()
    }

    fn slice(&self, range: Range<usize>) -> String {
        self.src.get(range).unwrap_or(&[]).iter().collect()
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(ParseError::TooDeep)
        } else {
            Ok(())
        }
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    // ---------------------------------------------------------------- lexer

    fn starts_with(&self, s: &str) -> bool {
        s.chars().enumerate().all(|(i, c)| self.ch(i) == Some(c))
    }

    fn lex(&mut self) -> Result<Tok, ParseError> {
        loop {
            match (self.ch(0), self.ch(1)) {
                (Some(' ' | '\t'), _) => self.pos += 1,
                (Some('\\'), Some('\n')) => self.pos += 2,
                (Some('#'), _) => {
                    while let Some(c) = self.ch(0) {
                        if c == '\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
        let Some(c) = self.ch(0) else {
            return Ok(Tok::Eof);
        };
        if c == '\n' {
            self.pos += 1;
            self.read_heredocs()?;
            return Ok(Tok::Newline);
        }
        if (c == '<' || c == '>') && self.ch(1) == Some('(') {
            return self.read_word().map(Tok::Word);
        }
        for op in OPS {
            if self.starts_with(op) {
                self.pos += op.len();
                return Ok(Tok::Op(op));
            }
        }
        let w = self.read_word()?;
        if !w.quoted
            && !w.raw.is_empty()
            && w.raw.chars().all(|c| c.is_ascii_digit())
            && matches!(self.ch(0), Some('<' | '>'))
            && let Ok(n) = w.raw.parse::<u32>()
        {
            return Ok(Tok::IoNum(n));
        }
        Ok(Tok::Word(w))
    }

    fn read_word(&mut self) -> Result<Word, ParseError> {
        let start = self.pos;
        let sub_start = self.out.commands.len();
        let mut b = Builder::default();
        while let Some(c) = self.ch(0) {
            match c {
                '<' | '>' if self.ch(1) == Some('(') => {
                    let piece = self.pos;
                    self.pos += 2;
                    self.enter()?;
                    self.nested_list("process substitution")?;
                    self.leave();
                    let raw = self.slice(piece..self.pos);
                    b.push_dynamic(&raw);
                    b.procsub = true;
                }
                ' ' | '\t' | '\n' | ';' | '&' | '|' | '(' | ')' | '<' | '>' => break,
                '\\' => {
                    b.quoted = true;
                    match self.ch(1) {
                        Some('\n') => self.pos += 2,
                        Some(n) => {
                            b.push(n);
                            self.pos += 2;
                        }
                        None => {
                            b.push('\\');
                            self.pos += 1;
                        }
                    }
                }
                '\'' => {
                    b.quoted = true;
                    self.pos += 1;
                    loop {
                        match self.ch(0) {
                            None => return Err(ParseError::Unterminated("single quote")),
                            Some('\'') => {
                                self.pos += 1;
                                break;
                            }
                            Some(q) => {
                                b.push(q);
                                self.pos += 1;
                            }
                        }
                    }
                }
                '"' => {
                    b.quoted = true;
                    self.pos += 1;
                    self.read_dquote(&mut b, false)?;
                }
                '$' => self.read_dollar(&mut b, false)?,
                '`' => self.read_backtick(&mut b, false)?,
                _ => {
                    // bash brace expansion (`{rm,-rf,/}`, `{1..3}`) makes the word's value unknown.
                    match c {
                        '{' => b.brace_open = true,
                        ',' if b.brace_open => b.brace_sep = true,
                        '.' if b.brace_open && self.ch(1) == Some('.') => b.brace_sep = true,
                        '}' if b.brace_open && b.brace_sep => b.dynamic = true,
                        _ => {}
                    }
                    b.push(c);
                    self.pos += 1;
                }
            }
        }
        if self.pos == start {
            return Err(ParseError::Unexpected(self.slice(start..start + 1)));
        }
        let raw = self.slice(start..self.pos);
        Ok(Word {
            raw,
            value: if b.dynamic { None } else { Some(b.value) },
            approx: b.approx,
            quoted: b.quoted,
            substitutions: sub_start..self.out.commands.len(),
            process_substitution: b.procsub,
        })
    }

    /// Contents of a double-quoted string (after the opening quote), or of an unquoted here-document body.
    fn read_dquote(&mut self, b: &mut Builder, heredoc: bool) -> Result<(), ParseError> {
        loop {
            match self.ch(0) {
                None if heredoc => return Ok(()),
                None => return Err(ParseError::Unterminated("double quote")),
                Some('"') if !heredoc => {
                    self.pos += 1;
                    return Ok(());
                }
                Some('\\') => match self.ch(1) {
                    Some(c @ ('$' | '`' | '\\')) => {
                        b.push(c);
                        self.pos += 2;
                    }
                    Some('"') if !heredoc => {
                        b.push('"');
                        self.pos += 2;
                    }
                    Some('\n') => self.pos += 2,
                    Some(c) => {
                        b.push('\\');
                        b.push(c);
                        self.pos += 2;
                    }
                    None => {
                        b.push('\\');
                        self.pos += 1;
                    }
                },
                Some('$') => self.read_dollar(b, true)?,
                Some('`') => self.read_backtick(b, !heredoc)?,
                Some(c) => {
                    b.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// A `$` expansion (or a literal `$`).
    fn read_dollar(&mut self, b: &mut Builder, in_dq: bool) -> Result<(), ParseError> {
        let start = self.pos;
        match self.ch(1) {
            Some('(') if self.ch(2) == Some('(') && self.looks_arithmetic() => {
                self.pos += 3;
                self.read_arith()?;
            }
            Some('(') => {
                self.pos += 2;
                self.enter()?;
                self.nested_list("command substitution")?;
                self.leave();
            }
            Some('{') => {
                self.pos += 2;
                self.read_braced_param()?;
            }
            Some('\'') if !in_dq => {
                // bash ANSI-C quoting: its value depends on escape processing, treat as dynamic.
                self.pos += 2;
                loop {
                    match self.ch(0) {
                        None => return Err(ParseError::Unterminated("$'…' quote")),
                        Some('\\') => self.pos += 2,
                        Some('\'') => {
                            self.pos += 1;
                            break;
                        }
                        Some(_) => self.pos += 1,
                    }
                }
            }
            Some('"') if !in_dq => {
                // bash locale string `$"…"`: same as a double-quoted string.
                self.pos += 1;
                return Ok(());
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                self.pos += 1;
                while let Some(c) = self.ch(0) {
                    if c == '_' || c.is_ascii_alphanumeric() {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || "@*#?-$!".contains(c) => self.pos += 2,
            _ => {
                b.push('$');
                self.pos += 1;
                return Ok(());
            }
        }
        let raw = self.slice(start..self.pos);
        b.push_dynamic(&raw);
        Ok(())
    }

    /// Cheap look-ahead deciding whether `$((` starts arithmetic (closes with `))`) or a subshell in a substitution.
    fn looks_arithmetic(&self) -> bool {
        let mut i = self.pos + 3;
        let mut depth = 0usize;
        while let Some(&c) = self.src.get(i) {
            match c {
                '(' => depth += 1,
                ')' => {
                    if depth == 0 {
                        return self.src.get(i + 1) == Some(&')');
                    }
                    depth -= 1;
                }
                '\\' => i += 1,
                '\'' => {
                    i += 1;
                    while let Some(&q) = self.src.get(i) {
                        if q == '\'' {
                            break;
                        }
                        i += 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        true
    }

    fn read_arith(&mut self) -> Result<(), ParseError> {
        self.enter()?;
        let mut tmp = Builder::default();
        let mut depth = 0usize;
        loop {
            match self.ch(0) {
                None => return Err(ParseError::Unterminated("$((")),
                Some('(') => {
                    depth += 1;
                    self.pos += 1;
                }
                Some(')') => {
                    if depth == 0 {
                        if self.ch(1) == Some(')') {
                            self.pos += 2;
                            break;
                        }
                        return Err(ParseError::Unexpected(")".to_string()));
                    }
                    depth -= 1;
                    self.pos += 1;
                }
                Some('$') => self.read_dollar(&mut tmp, true)?,
                Some('`') => self.read_backtick(&mut tmp, false)?,
                Some('\\') => self.pos += 2,
                Some(_) => self.pos += 1,
            }
        }
        self.leave();
        Ok(())
    }

    fn read_braced_param(&mut self) -> Result<(), ParseError> {
        self.enter()?;
        let mut tmp = Builder::default();
        loop {
            match self.ch(0) {
                None => return Err(ParseError::Unterminated("${")),
                Some('}') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => self.pos += 2,
                Some('\'') => {
                    self.pos += 1;
                    loop {
                        match self.ch(0) {
                            None => return Err(ParseError::Unterminated("single quote")),
                            Some('\'') => {
                                self.pos += 1;
                                break;
                            }
                            Some(_) => self.pos += 1,
                        }
                    }
                }
                Some('"') => {
                    self.pos += 1;
                    self.read_dquote(&mut tmp, false)?;
                }
                Some('$') => self.read_dollar(&mut tmp, true)?,
                Some('`') => self.read_backtick(&mut tmp, true)?,
                Some(_) => self.pos += 1,
            }
        }
        self.leave();
        Ok(())
    }

    fn read_backtick(&mut self, b: &mut Builder, in_dq: bool) -> Result<(), ParseError> {
        self.enter()?;
        let start = self.pos;
        self.pos += 1;
        let mut inner = String::new();
        loop {
            match self.ch(0) {
                None => return Err(ParseError::Unterminated("backquote")),
                Some('`') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => match self.ch(1) {
                    Some(c @ ('$' | '`' | '\\')) => {
                        inner.push(c);
                        self.pos += 2;
                    }
                    Some('"') if in_dq => {
                        inner.push('"');
                        self.pos += 2;
                    }
                    Some(c) => {
                        inner.push('\\');
                        inner.push(c);
                        self.pos += 2;
                    }
                    None => {
                        inner.push('\\');
                        self.pos += 1;
                    }
                },
                Some(c) => {
                    inner.push(c);
                    self.pos += 1;
                }
            }
        }
        let mut child = Parser::new(&inner, self.depth, &mut *self.out);
        child.parse_program()?;
        self.leave();
        let raw = self.slice(start..self.pos);
        b.push_dynamic(&raw);
        Ok(())
    }

    /// Parse a command list up to a closing `)` (substitutions); the lexer state is saved around it.
    fn nested_list(&mut self, what: &'static str) -> Result<(), ParseError> {
        let saved = self.peeked.take();
        self.parse_list()?;
        match self.next()? {
            Tok::Op(")") => {}
            Tok::Eof => return Err(ParseError::Unterminated(what)),
            t => return Err(ParseError::Unexpected(describe(&t))),
        }
        self.peeked = saved;
        Ok(())
    }

    fn read_heredocs(&mut self) -> Result<(), ParseError> {
        let pending = std::mem::take(&mut self.pending);
        for h in pending {
            let mut body = String::new();
            while self.pos < self.src.len() {
                let line_start = self.pos;
                while let Some(c) = self.ch(0) {
                    if c == '\n' {
                        break;
                    }
                    self.pos += 1;
                }
                let line = self.slice(line_start..self.pos);
                if self.ch(0) == Some('\n') {
                    self.pos += 1;
                }
                let cmp = if h.strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line.as_str()
                };
                if cmp == h.delim {
                    break;
                }
                body.push_str(cmp);
                body.push('\n');
            }
            if h.expand {
                self.enter()?;
                let mut tmp = Builder::default();
                let mut child = Parser::new(&body, self.depth, &mut *self.out);
                child.read_dquote(&mut tmp, true)?;
                self.leave();
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- token stream

    fn peek_kind(&mut self) -> Result<Kind, ParseError> {
        if self.peeked.is_none() {
            let t = self.lex()?;
            self.peeked = Some(t);
        }
        Ok(match &self.peeked {
            Some(Tok::Word(w)) => Kind::Word(reserved(w)),
            Some(Tok::IoNum(_)) => Kind::IoNum,
            Some(Tok::Op(o)) => Kind::Op(o),
            Some(Tok::Newline) => Kind::Newline,
            Some(Tok::Eof) | None => Kind::Eof,
        })
    }

    fn next(&mut self) -> Result<Tok, ParseError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    fn skip_newlines(&mut self) -> Result<(), ParseError> {
        while self.peek_kind()? == Kind::Newline {
            self.next()?;
        }
        Ok(())
    }

    fn expect_keyword(&mut self, kw: &'static str) -> Result<(), ParseError> {
        match self.next()? {
            Tok::Word(w) if reserved(&w) == Some(kw) => Ok(()),
            Tok::Eof => Err(ParseError::Unterminated(kw_context(kw))),
            t => Err(ParseError::Unexpected(describe(&t))),
        }
    }

    fn expect_op(&mut self, op: &'static str, ctx: &'static str) -> Result<(), ParseError> {
        match self.next()? {
            Tok::Op(o) if o == op => Ok(()),
            Tok::Eof => Err(ParseError::Unterminated(ctx)),
            t => Err(ParseError::Unexpected(describe(&t))),
        }
    }

    // ---------------------------------------------------------------- grammar

    fn parse_program(&mut self) -> Result<(), ParseError> {
        self.parse_list()?;
        match self.next()? {
            Tok::Eof => Ok(()),
            Tok::Op(")") => Err(ParseError::Unexpected(")".to_string())),
            t => Err(ParseError::Unexpected(describe(&t))),
        }
    }

    fn at_list_end(&mut self) -> Result<bool, ParseError> {
        Ok(matches!(
            self.peek_kind()?,
            Kind::Eof
                | Kind::Op(")" | ";;" | ";&" | ";;&")
                | Kind::Word(Some(
                    "then" | "else" | "elif" | "fi" | "do" | "done" | "esac" | "}"
                ))
        ))
    }

    fn parse_list(&mut self) -> Result<(), ParseError> {
        loop {
            self.skip_newlines()?;
            if self.at_list_end()? {
                return Ok(());
            }
            self.parse_and_or()?;
            match self.peek_kind()? {
                Kind::Op(";" | "&") => {
                    self.next()?;
                }
                Kind::Newline => {}
                _ => return Ok(()),
            }
        }
    }

    fn parse_and_or(&mut self) -> Result<(), ParseError> {
        self.parse_pipeline()?;
        while matches!(self.peek_kind()?, Kind::Op("&&" | "||")) {
            self.next()?;
            self.skip_newlines()?;
            self.parse_pipeline()?;
        }
        Ok(())
    }

    fn parse_pipeline(&mut self) -> Result<(), ParseError> {
        loop {
            match self.peek_kind()? {
                Kind::Word(Some("!")) => {
                    self.next()?;
                }
                Kind::Word(None) if matches!(&self.peeked, Some(Tok::Word(w)) if !w.quoted && w.value.as_deref() == Some("time")) =>
                {
                    self.next()?;
                    if matches!(self.peek_kind()?, Kind::Word(None))
                        && matches!(&self.peeked, Some(Tok::Word(w)) if w.value.as_deref() == Some("-p"))
                    {
                        self.next()?;
                    }
                    if matches!(
                        self.peek_kind()?,
                        Kind::Eof | Kind::Newline | Kind::Op(";" | "&")
                    ) {
                        return Ok(());
                    }
                }
                _ => break,
            }
        }
        let mut stages: Vec<Range<usize>> = Vec::new();
        loop {
            let start = self.out.commands.len();
            self.parse_command()?;
            stages.push(start..self.out.commands.len());
            if matches!(self.peek_kind()?, Kind::Op("|" | "|&")) {
                self.next()?;
                self.skip_newlines()?;
            } else {
                break;
            }
        }
        let first = stages.first().map(|r| r.start).unwrap_or(0);
        for stage in stages.iter().skip(1) {
            let up = first..stage.start;
            for idx in stage.clone() {
                if let Some(cmd) = self.out.commands.get_mut(idx) {
                    cmd.stdin_from_pipe = true;
                    cmd.upstream = Some(match cmd.upstream.take() {
                        Some(old) => old.start.min(up.start)..old.end.max(up.end),
                        None => up.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn parse_command(&mut self) -> Result<(), ParseError> {
        let start = self.out.commands.len();
        match self.peek_kind()? {
            Kind::Op("(") => {
                self.next()?;
                self.enter()?;
                self.parse_list()?;
                self.expect_op(")", "subshell")?;
                self.leave();
            }
            Kind::Word(Some("{")) => {
                self.next()?;
                self.enter()?;
                self.parse_list()?;
                self.expect_keyword("}")?;
                self.leave();
            }
            Kind::Word(Some("if")) => {
                self.next()?;
                self.enter()?;
                self.parse_list()?;
                self.expect_keyword("then")?;
                self.parse_list()?;
                loop {
                    match self.peek_kind()? {
                        Kind::Word(Some("elif")) => {
                            self.next()?;
                            self.parse_list()?;
                            self.expect_keyword("then")?;
                            self.parse_list()?;
                        }
                        Kind::Word(Some("else")) => {
                            self.next()?;
                            self.parse_list()?;
                        }
                        _ => break,
                    }
                }
                self.expect_keyword("fi")?;
                self.leave();
            }
            Kind::Word(Some("while" | "until")) => {
                self.next()?;
                self.enter()?;
                self.parse_list()?;
                self.expect_keyword("do")?;
                self.parse_list()?;
                self.expect_keyword("done")?;
                self.leave();
            }
            Kind::Word(Some("for")) => {
                self.next()?;
                self.enter()?;
                self.parse_for()?;
                self.leave();
            }
            Kind::Word(Some("case")) => {
                self.next()?;
                self.enter()?;
                self.parse_case()?;
                self.leave();
            }
            Kind::Word(Some("function")) => {
                self.next()?;
                let name = match self.next()? {
                    Tok::Word(w) => w.text().to_string(),
                    t => return Err(ParseError::Unexpected(describe(&t))),
                };
                if self.peek_kind()? == Kind::Op("(") {
                    self.next()?;
                    self.expect_op(")", "function definition")?;
                }
                return self.function_body(name);
            }
            Kind::Word(Some("[[")) => {
                self.parse_double_bracket()?;
                return Ok(());
            }
            Kind::Word(Some(
                kw @ ("then" | "else" | "elif" | "fi" | "do" | "done" | "esac" | "}" | "in"),
            )) => {
                return Err(ParseError::Unexpected(kw.to_string()));
            }
            Kind::Word(_) | Kind::IoNum => return self.parse_simple(),
            Kind::Op(o) if is_redirect_op(o) => return self.parse_simple(),
            Kind::Eof => return Err(ParseError::Unterminated("command")),
            Kind::Op(o) => return Err(ParseError::Unexpected(o.to_string())),
            Kind::Newline => return Err(ParseError::Unexpected("newline".to_string())),
        }
        // Trailing redirections of a compound command.
        let range = start..self.out.commands.len();
        while self.is_redirect_start()? {
            let r = self.parse_redirect()?;
            self.out.group_redirects.push(GroupRedirect {
                commands: range.clone(),
                redirect: r,
            });
        }
        Ok(())
    }

    fn function_body(&mut self, name: String) -> Result<(), ParseError> {
        self.skip_newlines()?;
        self.enter()?;
        let start = self.out.commands.len();
        self.parse_command()?;
        self.leave();
        let body = start..self.out.commands.len();
        self.out.functions.push(FunctionDef { name, body });
        Ok(())
    }

    fn parse_for(&mut self) -> Result<(), ParseError> {
        match self.next()? {
            Tok::Word(_) => {}
            Tok::Op("(") => return Err(ParseError::Unexpected("for ((".to_string())),
            t => return Err(ParseError::Unexpected(describe(&t))),
        }
        self.skip_newlines()?;
        if self.peek_kind()? == Kind::Word(Some("in")) {
            self.next()?;
            // The words of the list: substitutions inside them are collected by the lexer.
            while matches!(self.peek_kind()?, Kind::Word(_)) {
                self.next()?;
            }
            match self.peek_kind()? {
                Kind::Op(";") | Kind::Newline => {
                    self.next()?;
                }
                Kind::Eof => return Err(ParseError::Unterminated("for loop")),
                _ => {
                    let t = self.next()?;
                    return Err(ParseError::Unexpected(describe(&t)));
                }
            }
        } else if self.peek_kind()? == Kind::Op(";") {
            self.next()?;
        }
        self.skip_newlines()?;
        self.expect_keyword("do")?;
        self.parse_list()?;
        self.expect_keyword("done")
    }

    fn parse_case(&mut self) -> Result<(), ParseError> {
        match self.next()? {
            Tok::Word(_) => {}
            Tok::Eof => return Err(ParseError::Unterminated("case")),
            t => return Err(ParseError::Unexpected(describe(&t))),
        }
        self.skip_newlines()?;
        self.expect_keyword("in")?;
        loop {
            self.skip_newlines()?;
            match self.peek_kind()? {
                Kind::Word(Some("esac")) => {
                    self.next()?;
                    return Ok(());
                }
                Kind::Eof => return Err(ParseError::Unterminated("case")),
                _ => {}
            }
            if self.peek_kind()? == Kind::Op("(") {
                self.next()?;
            }
            loop {
                match self.next()? {
                    Tok::Word(_) => {}
                    Tok::Eof => return Err(ParseError::Unterminated("case")),
                    t => return Err(ParseError::Unexpected(describe(&t))),
                }
                if self.peek_kind()? == Kind::Op("|") {
                    self.next()?;
                } else {
                    break;
                }
            }
            self.expect_op(")", "case pattern")?;
            self.parse_list()?;
            match self.peek_kind()? {
                Kind::Op(";;" | ";&" | ";;&") => {
                    self.next()?;
                }
                Kind::Word(Some("esac")) => {}
                Kind::Eof => return Err(ParseError::Unterminated("case")),
                _ => {
                    let t = self.next()?;
                    return Err(ParseError::Unexpected(describe(&t)));
                }
            }
        }
    }

    /// bash `[[ … ]]`: everything up to `]]` is a word of one test command.
    fn parse_double_bracket(&mut self) -> Result<(), ParseError> {
        let mut cmd = SimpleCommand::default();
        loop {
            match self.next()? {
                Tok::Word(w) => {
                    let end = w.value.as_deref() == Some("]]") && !w.quoted;
                    cmd.words.push(w);
                    if end {
                        break;
                    }
                }
                Tok::Op(o) => cmd.words.push(Word::literal(o)),
                Tok::IoNum(n) => cmd.words.push(Word::literal(&n.to_string())),
                Tok::Newline => {}
                Tok::Eof => return Err(ParseError::Unterminated("[[")),
            }
        }
        self.out.commands.push(cmd);
        Ok(())
    }

    fn is_redirect_start(&mut self) -> Result<bool, ParseError> {
        Ok(match self.peek_kind()? {
            Kind::IoNum => true,
            Kind::Op(o) => is_redirect_op(o),
            _ => false,
        })
    }

    fn parse_redirect(&mut self) -> Result<Redirect, ParseError> {
        let mut fd = None;
        if self.peek_kind()? == Kind::IoNum
            && let Tok::IoNum(n) = self.next()?
        {
            fd = Some(n);
        }
        let op = match self.next()? {
            Tok::Op(o) => match RedirOp::from_op(o) {
                Some(op) => op,
                None => return Err(ParseError::Unexpected(o.to_string())),
            },
            t => return Err(ParseError::Unexpected(describe(&t))),
        };
        let target = match self.next()? {
            Tok::Word(w) => w,
            Tok::Eof => return Err(ParseError::Unterminated("redirection")),
            t => return Err(ParseError::Unexpected(describe(&t))),
        };
        if matches!(op, RedirOp::HereDoc | RedirOp::HereDocStrip) {
            self.pending.push(Pending {
                delim: unquote(&target.raw),
                strip_tabs: op == RedirOp::HereDocStrip,
                expand: !target.quoted,
            });
        }
        Ok(Redirect { fd, op, target })
    }

    fn parse_simple(&mut self) -> Result<(), ParseError> {
        let mut cmd = SimpleCommand::default();
        loop {
            match self.peek_kind()? {
                Kind::IoNum => cmd.redirects.push(self.parse_redirect()?),
                Kind::Op(o) if is_redirect_op(o) => cmd.redirects.push(self.parse_redirect()?),
                Kind::Word(_) => {
                    let Tok::Word(w) = self.next()? else {
                        return Err(ParseError::Unexpected("word".to_string()));
                    };
                    if cmd.words.is_empty() && is_assignment(&w) {
                        cmd.assignments.push(w);
                        continue;
                    }
                    let first = cmd.words.is_empty()
                        && cmd.assignments.is_empty()
                        && cmd.redirects.is_empty();
                    if first && self.peek_kind()? == Kind::Op("(") {
                        self.next()?;
                        self.expect_op(")", "function definition")?;
                        return self.function_body(w.text().to_string());
                    }
                    cmd.words.push(w);
                }
                _ => break,
            }
        }
        if cmd.words.is_empty() && cmd.assignments.is_empty() && cmd.redirects.is_empty() {
            let t = self.next()?;
            return Err(ParseError::Unexpected(describe(&t)));
        }
        self.out.commands.push(cmd);
        Ok(())
    }
}

fn kw_context(kw: &'static str) -> &'static str {
    match kw {
        "}" => "brace group",
        "then" | "fi" => "if",
        "do" | "done" => "loop",
        "in" | "esac" => "case",
        _ => "compound command",
    }
}

/// Whether a word is a `NAME=value` assignment.
pub fn is_assignment(w: &Word) -> bool {
    let mut chars = w.raw.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_ascii_alphabetic() => {}
        _ => return false,
    }
    for c in chars {
        if c == '=' {
            return true;
        }
        if !(c == '_' || c.is_ascii_alphanumeric()) {
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &Script, i: usize) -> Vec<String> {
        s.commands
            .get(i)
            .map(|c| c.words.iter().map(|w| w.text().to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn quoting_and_static_values() {
        let s = parse(r#"r\m -rf "/" '/'x"y"z"#).unwrap_or_default();
        assert_eq!(words(&s, 0), ["rm", "-rf", "/", "/xyz"]);
        assert!(
            s.commands
                .iter()
                .all(|c| c.words.iter().all(Word::is_static))
        );
    }

    #[test]
    fn substitutions_are_collected() {
        let s = parse("echo $(cat /etc/hosts | grep x) `id` \"$(uname -a)\"").unwrap_or_default();
        let progs: Vec<String> = s
            .commands
            .iter()
            .filter_map(|c| c.words.first().map(|w| w.text().to_string()))
            .collect();
        assert_eq!(progs, ["cat", "grep", "id", "uname", "echo"]);
        let grep = s.commands.get(1).map(|c| c.stdin_from_pipe);
        assert_eq!(grep, Some(true));
    }

    #[test]
    fn compound_commands() {
        let s = parse("if [ -f x ]; then cat x; elif true; then :; else echo no; fi\nfor i in 1 $(seq 2); do echo $i; done; case $x in a|b) ls;; *) pwd;; esac; while false; do break; done; { a; b; } > /tmp/o; (c)").unwrap_or_default();
        assert_eq!(s.commands.len(), 14);
        assert_eq!(s.group_redirects.len(), 1);
    }

    #[test]
    fn heredoc_and_functions() {
        let s =
            parse("cat <<EOF > /tmp/x\nhello $(id)\nEOF\nf() { f | f & }; f").unwrap_or_default();
        assert!(
            s.commands
                .iter()
                .any(|c| c.words.first().map(Word::text) == Some("id"))
        );
        assert_eq!(s.functions.len(), 1);
        let quoted = parse("cat <<'EOF'\n$(id)\nEOF").unwrap_or_default();
        assert_eq!(quoted.commands.len(), 1);
    }

    #[test]
    fn errors() {
        assert!(parse("echo 'x").is_err());
        assert!(parse("echo \"x").is_err());
        assert!(parse("echo $(x").is_err());
        assert!(parse("(echo").is_err());
        assert!(parse("echo )").is_err());
        assert!(parse("if true; then x").is_err());
        assert!(parse(&"(".repeat(100)).is_err());
    }

    #[test]
    fn brace_expansion_is_dynamic() {
        let s = parse("{rm,-rf,/} x{1..3} {} '{a,b}'").unwrap_or_default();
        let statics: Vec<bool> = s
            .commands
            .first()
            .map(|c| c.words.iter().map(Word::is_static).collect())
            .unwrap_or_default();
        assert_eq!(statics, [false, false, true, true]);
    }

    #[test]
    fn arithmetic_and_params() {
        let s = parse("echo $((1 + $(id -u))) ${X:-$(hostname)} $((a) )").unwrap_or_default();
        let progs: Vec<String> = s
            .commands
            .iter()
            .filter_map(|c| c.words.first().map(|w| w.text().to_string()))
            .collect();
        assert_eq!(progs, ["id", "hostname", "a", "echo"]);
    }
}
