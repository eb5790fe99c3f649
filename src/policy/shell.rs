//! A parser of `/bin/sh -c` command lines as dash (Debian's and Ubuntu's `/bin/sh`) reads them, flattened into every
//! simple command the line would run.
//!
//! Nothing is executed or expanded. Each [`Word`] keeps its literal value when it holds no expansion, and an
//! approximation (expansions kept as source text) otherwise. Commands inside command substitutions, backquotes,
//! here-documents with expansions, subshells, groups, `if`/`for`/`while`/`until`/`case` bodies and function bodies all
//! land in the flat [`Script::commands`] list. Where dash and bash differ, this follows dash: `&>` is `&` then `>`,
//! `[[` is an ordinary word, `function`, `time` and `$'…'` mean nothing special, and `<(…)`, `<<<`, `|&` are syntax
//! errors. [`Dialect::Bash`] (for code handed to `bash -c`) accepts those bash forms. `tests/policy_corpus.rs` runs a
//! generated corpus through the real dash and compares. Nesting depth and input length are bounded, so hostile input
//! yields a [`ParseError`], never a stack overflow.

use std::ops::Range;

/// Maximum nesting depth (subshells, groups, compound commands, substitutions, nested `sh -c`).
pub const MAX_DEPTH: usize = 32;
/// Maximum input length in bytes.
pub const MAX_INPUT: usize = 64 * 1024;

/// Which shell's grammar to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// dash, i.e. `/bin/sh` where the agent runs.
    Dash,
    /// bash extensions on top: `<(…)`, `>(…)`, `&>`, `&>>`, `<<<`, `|&`, `;&`, `;;&`, `$'…'`, multi-digit fds.
    Bash,
}

/// One shell word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Word {
    /// Source text, quotes included.
    pub raw: String,
    /// Literal value after quote removal; `None` when the word holds an expansion (`$…`, backquotes, a leading `~`).
    pub value: Option<String>,
    /// Literal parts with each expansion kept as its source text.
    pub approx: String,
    /// Whether an unquoted `*`, `?` or `[` makes the word a pathname pattern.
    pub glob: bool,
    /// The word as a pattern for [`matches`]: quoted special characters escaped with `\\`, unquoted `*`, `?`, `[`
    /// kept, each expansion written as [`ANY`].
    pub pattern: String,
    /// Whether any part was quoted or backslash-escaped.
    pub quoted: bool,
    /// Indices in [`Script::commands`] of the commands run by substitutions inside this word.
    pub substitutions: Range<usize>,
    /// Whether the word holds a bash process substitution `<(…)`/`>(…)`.
    pub process_substitution: bool,
}

impl Word {
    /// A static word with the given literal value.
    pub fn literal(s: &str) -> Word {
        Word {
            raw: s.to_string(),
            value: Some(s.to_string()),
            approx: s.to_string(),
            pattern: escape(s),
            ..Word::default()
        }
    }

    /// The literal value when static, else the approximation.
    pub fn text(&self) -> &str {
        self.value.as_deref().unwrap_or(&self.approx)
    }

    /// The value when it is one exact string: static and not a pattern.
    pub fn exact(&self) -> Option<&str> {
        self.value.as_deref().filter(|_| !self.glob)
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
    /// `<<` or `<<-`
    HereDoc,
    /// `<&`
    DupRead,
    /// `>&`
    DupWrite,
    /// bash `<<<`
    HereString,
    /// bash `&>` / `&>>`
    WriteBoth,
}

const DASH_OPS: [&str; 17] = [
    "<<-", "&&", "||", ";;", ">>", ">|", ">&", "<<", "<>", "<&", "<", ">", "|", "&", ";", "(", ")",
];
const BASH_OPS: [&str; 23] = [
    ";;&", "<<-", "<<<", "&>>", "&&", "||", ";;", ";&", "|&", ">>", ">|", ">&", "<<", "<>", "<&",
    "&>", "<", ">", "|", "&", ";", "(", ")",
];

fn redir_op(op: &str) -> Option<RedirOp> {
    Some(match op {
        "<" => RedirOp::Read,
        ">" => RedirOp::Write,
        ">>" => RedirOp::Append,
        ">|" => RedirOp::Clobber,
        "<>" => RedirOp::ReadWrite,
        "<<" | "<<-" => RedirOp::HereDoc,
        "<&" => RedirOp::DupRead,
        ">&" => RedirOp::DupWrite,
        "<<<" => RedirOp::HereString,
        "&>" | "&>>" => RedirOp::WriteBoth,
        _ => return None,
    })
}

/// One redirection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Explicit file descriptor (`2>`), if any.
    pub fd: Option<u32>,
    /// The operator.
    pub op: RedirOp,
    /// The target word (the delimiter for a here-document).
    pub target: Word,
    /// For a here-document: its index in [`Script::heredocs`].
    pub heredoc: Option<usize>,
}

impl Redirect {
    /// Whether the target is opened as a file for writing.
    pub fn writes_file(&self) -> bool {
        match self.op {
            RedirOp::Write
            | RedirOp::Append
            | RedirOp::Clobber
            | RedirOp::ReadWrite
            | RedirOp::WriteBoth => true,
            // bash only: `>&file` writes stdout and stderr to the file (dash rejects it while parsing).
            RedirOp::DupWrite => self.target.exact().is_some_and(|v| !is_fd_word(v)),
            _ => false,
        }
    }

    /// Whether the redirection replaces stdin.
    pub fn feeds_stdin(&self) -> bool {
        matches!(self.fd, None | Some(0))
            && matches!(
                self.op,
                RedirOp::Read | RedirOp::ReadWrite | RedirOp::HereDoc | RedirOp::HereString
            )
    }
}

fn is_fd_word(v: &str) -> bool {
    v == "-" || (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
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
    /// Indices in [`Script::commands`] of the earlier stages of its pipeline (an over-approximation), if any.
    pub upstream: Option<Range<usize>>,
}

/// A here-document's body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HereDoc {
    /// The body as written (tabs stripped for `<<-`).
    pub body: String,
    /// Whether the body undergoes expansion (the delimiter was unquoted).
    pub expands: bool,
}

/// The flattened parse result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    /// Every simple command anywhere in the tree, substitutions before the command that holds them.
    pub commands: Vec<SimpleCommand>,
    /// Redirections written on compound commands (`{ …; } > f`, `(…) > f`, `done > f`).
    pub compound_redirects: Vec<Redirect>,
    /// Here-document bodies, by [`Redirect::heredoc`].
    pub heredocs: Vec<HereDoc>,
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
    /// A construct dash refuses although it reads the token.
    #[error("{0}")]
    Bad(&'static str),
}

/// Parse a command line with dash's grammar.
pub fn parse(src: &str) -> Result<Script, ParseError> {
    parse_nested(src, Dialect::Dash, 0)
}

/// Parse code that is itself nested `depth` levels deep (the string of `sh -c`).
pub fn parse_nested(src: &str, dialect: Dialect, depth: usize) -> Result<Script, ParseError> {
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
    Parser::new(src, dialect, depth, &mut out).parse_program()?;
    Ok(out)
}

const RESERVED: [&str; 16] = [
    "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until", "for",
    "in", "{", "}", "!",
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

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Whether a word is a `NAME=value` assignment.
pub fn is_assignment(w: &Word) -> bool {
    w.raw.split_once('=').is_some_and(|(name, _)| is_name(name))
}

/// Remove quoting from a here-document delimiter.
fn unquote(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
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
    pattern: String,
    dynamic: bool,
    glob: bool,
    quoted: bool,
    procsub: bool,
}

impl Builder {
    /// A quoted (or escaped) character.
    fn push(&mut self, c: char) {
        self.value.push(c);
        self.approx.push(c);
        if matches!(c, '*' | '?' | '[' | '\\' | ANY) {
            self.pattern.push('\\');
        }
        self.pattern.push(c);
    }

    /// An unquoted literal character: `*`, `?` and `[` are pattern characters.
    fn push_bare(&mut self, c: char) {
        self.value.push(c);
        self.approx.push(c);
        self.glob |= matches!(c, '*' | '?' | '[');
        self.pattern.push(c);
    }

    fn push_dynamic(&mut self, raw: &str) {
        self.approx.push_str(raw);
        self.pattern.push(ANY);
        self.dynamic = true;
    }
}

/// In a [`Word::pattern`], an expansion: any string, `/` included.
pub const ANY: char = '\u{1}';

/// A literal string as a pattern.
pub fn escape(s: &str) -> String {
    let mut b = Builder::default();
    s.chars().for_each(|c| b.push(c));
    b.pattern
}

/// Whether `text` matches `pattern` (see [`Word::pattern`]): `*` any run without `/`, `?` one character other than
/// `/`, `[…]` one character (the class is not read), [`ANY`] any run, `\\c` the character `c`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Memoised on (pattern index, text index): patterns and paths are short, so this stays small.
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(0usize, 0usize)];
    while let Some((i, j)) = stack.pop() {
        if !seen.insert((i, j)) {
            continue;
        }
        match p.get(i) {
            None if j == t.len() => return true,
            None => {}
            Some(&ANY) => {
                stack.push((i + 1, j));
                if j < t.len() {
                    stack.push((i, j + 1));
                }
            }
            Some('*') => {
                stack.push((i + 1, j));
                if t.get(j).is_some_and(|c| *c != '/') {
                    stack.push((i, j + 1));
                }
            }
            Some('?') if t.get(j).is_some_and(|c| *c != '/') => stack.push((i + 1, j + 1)),
            Some('[') if t.get(j).is_some_and(|c| *c != '/') => {
                match p.iter().skip(i + 2).position(|c| *c == ']') {
                    Some(k) => stack.push((i + 3 + k, j + 1)),
                    None if t.get(j) == Some(&'[') => stack.push((i + 1, j + 1)),
                    None => {}
                }
            }
            Some('\\') if p.get(i + 1).is_some() && p.get(i + 1) == t.get(j) => {
                stack.push((i + 2, j + 1));
            }
            Some(c) if !matches!(c, '?' | '[' | '\\') && Some(c) == t.get(j) => {
                stack.push((i + 1, j + 1));
            }
            _ => {}
        }
    }
    false
}

struct Pending {
    delim: String,
    strip_tabs: bool,
    index: usize,
}

struct Parser<'o> {
    src: Vec<char>,
    pos: usize,
    dialect: Dialect,
    depth: usize,
    peeked: Option<Tok>,
    pending: Vec<Pending>,
    out: &'o mut Script,
}

impl<'o> Parser<'o> {
    fn new(src: &str, dialect: Dialect, depth: usize, out: &'o mut Script) -> Parser<'o> {
        Parser {
            src: src.chars().collect(),
            pos: 0,
            dialect,
            depth,
            peeked: None,
            pending: Vec::new(),
            out,
        }
    }

    fn bash(&self) -> bool {
        self.dialect == Dialect::Bash
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
                    while self.ch(0).is_some_and(|c| c != '\n') {
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
        if self.bash() && (c == '<' || c == '>') && self.ch(1) == Some('(') {
            return self.read_word().map(Tok::Word);
        }
        let ops: &[&'static str] = if self.bash() { &BASH_OPS } else { &DASH_OPS };
        for op in ops {
            if self.starts_with(op) {
                self.pos += op.len();
                return Ok(Tok::Op(op));
            }
        }
        let w = self.read_word()?;
        let max_digits = if self.bash() { 9 } else { 1 };
        if !w.quoted
            && (1..=max_digits).contains(&w.raw.len())
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
                '<' | '>' if self.bash() && self.ch(1) == Some('(') => {
                    let piece = self.pos;
                    self.pos += 2;
                    self.nested_list("process substitution")?;
                    b.push_dynamic(&self.slice(piece..self.pos));
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
                            Some('\'') => break,
                            Some(q) => b.push(q),
                        }
                        self.pos += 1;
                    }
                    self.pos += 1;
                }
                '"' => {
                    b.quoted = true;
                    self.pos += 1;
                    self.read_dquote(&mut b, false)?;
                }
                '$' => self.read_dollar(&mut b, false)?,
                '`' => self.read_backtick(&mut b)?,
                '~' if self.pos == start => {
                    b.push_dynamic("~");
                    self.pos += 1;
                }
                _ => {
                    b.push_bare(c);
                    self.pos += 1;
                }
            }
        }
        if self.pos == start {
            return Err(ParseError::Unexpected(self.slice(start..start + 1)));
        }
        Ok(Word {
            raw: self.slice(start..self.pos),
            value: (!b.dynamic).then_some(b.value),
            approx: b.approx,
            pattern: b.pattern,
            glob: b.glob,
            quoted: b.quoted,
            substitutions: sub_start..self.out.commands.len(),
            process_substitution: b.procsub,
        })
    }

    /// Contents of a double-quoted string (after the opening quote), or of an expanding here-document body.
    fn read_dquote(&mut self, b: &mut Builder, heredoc: bool) -> Result<(), ParseError> {
        loop {
            match self.ch(0) {
                None if heredoc => return Ok(()),
                None => return Err(ParseError::Unterminated("double quote")),
                Some('"') if !heredoc => {
                    self.pos += 1;
                    return Ok(());
                }
                Some('\\') => {
                    match self.ch(1) {
                        Some(c @ ('$' | '`' | '\\')) => b.push(c),
                        Some('"') if !heredoc => b.push('"'),
                        Some('\n') => {}
                        Some(c) => {
                            b.push('\\');
                            b.push(c);
                        }
                        None => b.push('\\'),
                    }
                    self.pos = (self.pos + 2).min(self.src.len());
                }
                Some('$') => self.read_dollar(b, true)?,
                Some('`') => self.read_backtick(b)?,
                Some(c) => {
                    b.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// A `$` expansion, or a literal `$`.
    fn read_dollar(&mut self, b: &mut Builder, in_dq: bool) -> Result<(), ParseError> {
        let start = self.pos;
        match self.ch(1) {
            Some('(') if self.ch(2) == Some('(') => {
                // dash reads `$((` as arithmetic, always.
                self.pos += 3;
                self.read_arith()?;
            }
            Some('(') => {
                self.pos += 2;
                self.nested_list("command substitution")?;
            }
            Some('{') => {
                self.pos += 2;
                self.read_braced_param()?;
            }
            Some('\'') if self.bash() && !in_dq => {
                self.pos += 2;
                loop {
                    match self.ch(0) {
                        None => return Err(ParseError::Unterminated("$'…' quote")),
                        Some('\\') => self.pos += 2,
                        Some('\'') => break,
                        Some(_) => self.pos += 1,
                    }
                }
                self.pos += 1;
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                self.pos += 1;
                while self
                    .ch(0)
                    .is_some_and(|c| c == '_' || c.is_ascii_alphanumeric())
                {
                    self.pos += 1;
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

    fn read_arith(&mut self) -> Result<(), ParseError> {
        self.enter()?;
        let mut tmp = Builder::default();
        let mut open = 0usize;
        loop {
            match self.ch(0) {
                None => return Err(ParseError::Unterminated("$((")),
                Some('(') => {
                    open += 1;
                    self.pos += 1;
                }
                Some(')') if open == 0 => {
                    if self.ch(1) != Some(')') {
                        return Err(ParseError::Unterminated("$(("));
                    }
                    self.pos += 2;
                    break;
                }
                Some(')') => {
                    open -= 1;
                    self.pos += 1;
                }
                Some('$') => self.read_dollar(&mut tmp, true)?,
                Some('`') => self.read_backtick(&mut tmp)?,
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
                    while self.ch(0) != Some('\'') {
                        if self.ch(0).is_none() {
                            return Err(ParseError::Unterminated("single quote"));
                        }
                        self.pos += 1;
                    }
                    self.pos += 1;
                }
                Some('"') => {
                    self.pos += 1;
                    self.read_dquote(&mut tmp, false)?;
                }
                Some('$') => self.read_dollar(&mut tmp, true)?,
                Some('`') => self.read_backtick(&mut tmp)?,
                Some(_) => self.pos += 1,
            }
        }
        self.leave();
        Ok(())
    }

    fn read_backtick(&mut self, b: &mut Builder) -> Result<(), ParseError> {
        self.enter()?;
        let start = self.pos;
        self.pos += 1;
        let mut inner = String::new();
        loop {
            match self.ch(0) {
                None => return Err(ParseError::Unterminated("backquote")),
                Some('`') => break,
                Some('\\') => {
                    match self.ch(1) {
                        Some(c @ ('$' | '`' | '\\')) => inner.push(c),
                        Some(c) => {
                            inner.push('\\');
                            inner.push(c);
                        }
                        None => inner.push('\\'),
                    }
                    self.pos += 1;
                }
                Some(c) => inner.push(c),
            }
            self.pos += 1;
        }
        self.pos += 1;
        // dash stops reading backquoted code at a token that ends a list (`}`, `fi`, `)`, …) and ignores the rest.
        let bash = self.bash();
        let mut child = Parser::new(&inner, self.dialect, self.depth, &mut *self.out);
        if bash {
            child.parse_program()?;
        } else {
            child.parse_list()?;
        }
        self.leave();
        let raw = self.slice(start..self.pos);
        b.push_dynamic(&raw);
        Ok(())
    }

    /// A command list up to the closing `)` of a substitution; the lexer state is saved around it.
    fn nested_list(&mut self, what: &'static str) -> Result<(), ParseError> {
        self.enter()?;
        let saved = self.peeked.take();
        self.parse_list()?;
        match self.next()? {
            Tok::Op(")") => {}
            Tok::Eof => return Err(ParseError::Unterminated(what)),
            t => return Err(ParseError::Unexpected(describe(&t))),
        }
        self.peeked = saved;
        self.leave();
        Ok(())
    }

    fn read_heredocs(&mut self) -> Result<(), ParseError> {
        for h in std::mem::take(&mut self.pending) {
            let mut body = String::new();
            while self.pos < self.src.len() {
                let line_start = self.pos;
                while self.ch(0).is_some_and(|c| c != '\n') {
                    self.pos += 1;
                }
                let line = self.slice(line_start..self.pos);
                if self.ch(0) == Some('\n') {
                    self.pos += 1;
                }
                let line = if h.strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line.as_str()
                };
                if line == h.delim {
                    break;
                }
                body.push_str(line);
                body.push('\n');
            }
            let expands = self.out.heredocs.get(h.index).is_some_and(|d| d.expands);
            if expands {
                self.enter()?;
                let mut tmp = Builder::default();
                Parser::new(&body, self.dialect, self.depth, &mut *self.out)
                    .read_dquote(&mut tmp, true)?;
                self.leave();
            }
            if let Some(d) = self.out.heredocs.get_mut(h.index) {
                d.body = body;
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

    fn unexpected(&mut self, what: &'static str) -> ParseError {
        match self.next() {
            Ok(Tok::Eof) => ParseError::Unterminated(what),
            Ok(t) => ParseError::Unexpected(describe(&t)),
            Err(e) => e,
        }
    }

    fn skip_newlines(&mut self) -> Result<(), ParseError> {
        while self.peek_kind()? == Kind::Newline {
            self.next()?;
        }
        Ok(())
    }

    fn expect(&mut self, want: Kind, what: &'static str) -> Result<(), ParseError> {
        if self.peek_kind()? == want {
            self.next()?;
            Ok(())
        } else {
            Err(self.unexpected(what))
        }
    }

    fn keyword(&mut self, kw: &'static str, what: &'static str) -> Result<(), ParseError> {
        self.expect(Kind::Word(Some(kw)), what)
    }

    // ---------------------------------------------------------------- grammar

    fn parse_program(&mut self) -> Result<(), ParseError> {
        self.parse_list()?;
        match self.next()? {
            Tok::Eof => Ok(()),
            t => Err(ParseError::Unexpected(describe(&t))),
        }
    }

    fn parse_list(&mut self) -> Result<(), ParseError> {
        loop {
            self.skip_newlines()?;
            if matches!(
                self.peek_kind()?,
                Kind::Eof
                    | Kind::Op(")" | ";;" | ";&" | ";;&")
                    | Kind::Word(Some(
                        "then" | "else" | "elif" | "fi" | "do" | "done" | "esac" | "}"
                    ))
            ) {
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
        if self.peek_kind()? == Kind::Word(Some("!")) {
            self.next()?;
        }
        let first = self.out.commands.len();
        loop {
            let start = self.out.commands.len();
            self.parse_command()?;
            if start > first {
                let up = first..start;
                for cmd in self.out.commands.get_mut(start..).unwrap_or_default() {
                    cmd.upstream = Some(match cmd.upstream.take() {
                        Some(old) => old.start.min(up.start)..old.end.max(up.end),
                        None => up.clone(),
                    });
                }
            }
            if matches!(self.peek_kind()?, Kind::Op("|" | "|&")) {
                self.next()?;
                self.skip_newlines()?;
            } else {
                return Ok(());
            }
        }
    }

    fn parse_command(&mut self) -> Result<(), ParseError> {
        match self.peek_kind()? {
            Kind::Op("(") => {
                self.next()?;
                self.body(|p| {
                    p.parse_list()?;
                    p.expect(Kind::Op(")"), "subshell")
                })?;
            }
            Kind::Word(Some("{")) => {
                self.next()?;
                self.body(|p| {
                    p.parse_list()?;
                    p.keyword("}", "brace group")
                })?;
            }
            Kind::Word(Some("if")) => {
                self.next()?;
                self.body(|p| {
                    p.parse_list()?;
                    p.keyword("then", "if")?;
                    p.parse_list()?;
                    loop {
                        match p.peek_kind()? {
                            Kind::Word(Some("elif")) => {
                                p.next()?;
                                p.parse_list()?;
                                p.keyword("then", "if")?;
                                p.parse_list()?;
                            }
                            Kind::Word(Some("else")) => {
                                p.next()?;
                                p.parse_list()?;
                                return p.keyword("fi", "if");
                            }
                            _ => return p.keyword("fi", "if"),
                        }
                    }
                })?;
            }
            Kind::Word(Some("while" | "until")) => {
                self.next()?;
                self.body(|p| {
                    p.parse_list()?;
                    p.do_group()
                })?;
            }
            Kind::Word(Some("for")) => {
                self.next()?;
                self.body(Parser::parse_for)?;
            }
            Kind::Word(Some("case")) => {
                self.next()?;
                self.body(Parser::parse_case)?;
            }
            Kind::Word(Some(kw)) => return Err(ParseError::Unexpected(kw.into())),
            Kind::Word(_) | Kind::IoNum => return self.parse_simple(),
            Kind::Op(o) if redir_op(o).is_some() => return self.parse_simple(),
            _ => return Err(self.unexpected("command")),
        }
        while self.is_redirect_start()? {
            let r = self.parse_redirect()?;
            self.out.compound_redirects.push(r);
        }
        Ok(())
    }

    fn body(
        &mut self,
        f: impl FnOnce(&mut Parser<'o>) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        self.enter()?;
        f(self)?;
        self.leave();
        Ok(())
    }

    fn do_group(&mut self) -> Result<(), ParseError> {
        self.keyword("do", "loop")?;
        self.parse_list()?;
        self.keyword("done", "loop")
    }

    fn parse_for(&mut self) -> Result<(), ParseError> {
        match self.next()? {
            Tok::Word(w) if w.value.as_deref().is_some_and(is_name) => {}
            Tok::Eof => return Err(ParseError::Unterminated("for loop")),
            _ => return Err(ParseError::Bad("Bad for loop variable")),
        }
        self.skip_newlines()?;
        if self.peek_kind()? == Kind::Word(Some("in")) {
            self.next()?;
            while matches!(self.peek_kind()?, Kind::Word(_)) {
                self.next()?;
            }
            match self.peek_kind()? {
                Kind::Op(";") | Kind::Newline => {
                    self.next()?;
                }
                _ => return Err(self.unexpected("for loop")),
            }
        } else if self.peek_kind()? == Kind::Op(";") {
            self.next()?;
        }
        self.skip_newlines()?;
        self.do_group()
    }

    fn parse_case(&mut self) -> Result<(), ParseError> {
        match self.next()? {
            Tok::Word(_) => {}
            Tok::Eof => return Err(ParseError::Unterminated("case")),
            t => return Err(ParseError::Unexpected(describe(&t))),
        }
        self.skip_newlines()?;
        self.keyword("in", "case")?;
        loop {
            self.skip_newlines()?;
            if self.peek_kind()? == Kind::Word(Some("esac")) {
                self.next()?;
                return Ok(());
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
                if self.peek_kind()? != Kind::Op("|") {
                    break;
                }
                self.next()?;
            }
            self.expect(Kind::Op(")"), "case pattern")?;
            self.parse_list()?;
            match self.peek_kind()? {
                Kind::Op(";;" | ";&" | ";;&") => {
                    self.next()?;
                }
                Kind::Word(Some("esac")) => {}
                _ => return Err(self.unexpected("case")),
            }
        }
    }

    fn is_redirect_start(&mut self) -> Result<bool, ParseError> {
        Ok(match self.peek_kind()? {
            Kind::IoNum => true,
            Kind::Op(o) => redir_op(o).is_some(),
            _ => false,
        })
    }

    fn parse_redirect(&mut self) -> Result<Redirect, ParseError> {
        let mut fd = None;
        if let Kind::IoNum = self.peek_kind()?
            && let Tok::IoNum(n) = self.next()?
        {
            fd = Some(n);
        }
        let (op, text) = match self.next()? {
            Tok::Op(o) => match redir_op(o) {
                Some(op) => (op, o),
                None => return Err(ParseError::Unexpected(o.to_string())),
            },
            t => return Err(ParseError::Unexpected(describe(&t))),
        };
        let target = match self.next()? {
            Tok::Word(w) => w,
            Tok::Eof => return Err(ParseError::Unterminated("redirection")),
            t => return Err(ParseError::Unexpected(describe(&t))),
        };
        // dash: the word of `>&`/`<&` must be one digit or `-` unless it holds an expansion or quotes.
        if matches!(op, RedirOp::DupRead | RedirOp::DupWrite)
            && !self.bash()
            && !target.quoted
            && target.value.as_deref().is_some_and(|v| {
                !(v == "-" || (v.len() == 1 && v.chars().all(|c| c.is_ascii_digit())))
            })
        {
            return Err(ParseError::Bad("Bad fd number"));
        }
        let mut heredoc = None;
        if op == RedirOp::HereDoc {
            let index = self.out.heredocs.len();
            self.out.heredocs.push(HereDoc {
                body: String::new(),
                expands: !target.quoted,
            });
            self.pending.push(Pending {
                delim: unquote(&target.raw),
                strip_tabs: text == "<<-",
                index,
            });
            heredoc = Some(index);
        }
        Ok(Redirect {
            fd,
            op,
            target,
            heredoc,
        })
    }

    fn parse_simple(&mut self) -> Result<(), ParseError> {
        let mut cmd = SimpleCommand::default();
        loop {
            match self.peek_kind()? {
                Kind::IoNum => cmd.redirects.push(self.parse_redirect()?),
                Kind::Op(o) if redir_op(o).is_some() => cmd.redirects.push(self.parse_redirect()?),
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
                        return self.function(&w);
                    }
                    cmd.words.push(w);
                }
                _ => break,
            }
        }
        self.out.commands.push(cmd);
        Ok(())
    }

    /// `name() command`: the body's commands join the flat list like any others.
    fn function(&mut self, name: &Word) -> Result<(), ParseError> {
        self.next()?;
        self.expect(Kind::Op(")"), "function definition")?;
        if !name.value.as_deref().is_some_and(is_name) || name.quoted {
            return Err(ParseError::Bad("Bad function name"));
        }
        self.skip_newlines()?;
        // dash takes any command as the body, a simple one included (`f() echo hi`).
        self.body(Parser::parse_command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(src: &str) -> Vec<Vec<String>> {
        parse(src)
            .unwrap_or_default()
            .commands
            .iter()
            .map(|c| c.words.iter().map(|w| w.text().to_string()).collect())
            .collect()
    }

    #[test]
    fn quoting_escapes_and_static_values() {
        let s = parse(r#"r\m -rf "/" '/'x"y"z $'a' ~ a~ *.log"#).unwrap_or_default();
        let c = &s.commands[0];
        let vals: Vec<Option<&str>> = c.words.iter().map(|w| w.value.as_deref()).collect();
        // dash: `$'a'` is a literal `$` then a quoted `a`; `~` at the start expands.
        assert_eq!(
            vals,
            [
                Some("rm"),
                Some("-rf"),
                Some("/"),
                Some("/xyz"),
                Some("$a"),
                None,
                Some("a~"),
                Some("*.log")
            ]
        );
        assert!(c.words[7].glob && !c.words[2].glob);
        assert!(parse("echo '*'").unwrap_or_default().commands[0].words[1].exact() == Some("*"));
    }

    #[test]
    fn dash_reads_bash_forms_as_dash_does() {
        // `&>` is `&` then `>`; `[[` is a word; `function` and `time` are words.
        assert_eq!(words("ls &> /dev/null"), [vec!["ls"], vec![]]);
        assert_eq!(
            words("[[ -f /etc/hosts ]] && echo y"),
            [vec!["[[", "-f", "/etc/hosts", "]]"], vec!["echo", "y"]]
        );
        assert_eq!(words("time ls"), [vec!["time", "ls"]]);
        for bad in [
            "cat <(ls)",
            "cat <<< x",
            "a |& b",
            "echo a >&file",
            "function f { :; }",
            "for 1 in a; do :; done",
            "[[() { :; }",
            "echo $((1)",
            "! ! true",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // Backquoted code ends at a stray closing token; dash ignores the rest.
        assert_eq!(
            words("echo `a; } rm -rf /`"),
            [vec!["a"], vec!["echo", "`a; } rm -rf /`"]]
        );
        // Only one digit makes an fd number.
        let s = parse("echo 12>o 2>e").unwrap_or_default();
        assert_eq!(words("echo 12>o"), [vec!["echo", "12"]]);
        assert_eq!(s.commands[0].redirects[1].fd, Some(2));
    }

    #[test]
    fn bash_dialect_reads_bash_forms() {
        let s = parse_nested("sh <(curl x) &> /dev/null", Dialect::Bash, 0).unwrap_or_default();
        assert_eq!(s.commands.len(), 2);
        assert!(s.commands[1].words[1].process_substitution);
        assert_eq!(s.commands[1].redirects[0].op, RedirOp::WriteBoth);
    }

    #[test]
    fn substitutions_pipelines_and_compounds() {
        let s = parse("echo $(cat /etc/hosts | grep x) `id` \"$(uname -a)\" $((1 + $(id -u)))")
            .unwrap_or_default();
        let progs: Vec<&str> = s.commands.iter().map(|c| c.words[0].text()).collect();
        assert_eq!(progs, ["cat", "grep", "id", "uname", "id", "echo"]);
        assert_eq!(s.commands[1].upstream, Some(0..1));
        assert_eq!(s.commands[5].words[1].substitutions, 0..2);
        let s = parse(
            "if [ -f x ]; then cat x; elif true; then :; else echo no; fi\n\
             for i in 1 $(seq 2); do echo $i; done; case $x in a|b) ls;; (*) pwd;; esac\n\
             while false; do break; done; { a; b; } > /tmp/o; (c); f() { g; }",
        )
        .unwrap_or_default();
        assert_eq!(s.commands.len(), 15);
        assert_eq!(s.compound_redirects.len(), 1);
    }

    #[test]
    fn heredocs_are_recorded() {
        let s = parse("cat <<EOF > /tmp/x\nhello $(id)\nEOF\nsh <<-'E'\n\treboot\n\tE\n")
            .unwrap_or_default();
        let progs: Vec<&str> = s.commands.iter().map(|c| c.words[0].text()).collect();
        // A here-document's body is read at the newline, before its command is complete.
        assert_eq!(progs, ["id", "cat", "sh"]);
        assert_eq!(s.heredocs.len(), 2);
        assert_eq!(s.heredocs[1].body, "reboot\n");
        assert!(!s.heredocs[1].expands);
    }

    #[test]
    fn errors_and_bounds() {
        for bad in [
            "echo 'x",
            "echo \"x",
            "echo $(x",
            "(echo",
            "echo )",
            "if true; then x",
            "echo a;;",
            "; echo",
            "echo |",
            "in",
            "{ echo a }",
            "(echo a)(echo b)",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse(&"(".repeat(100)), Err(ParseError::TooDeep));
        assert_eq!(parse("a\0"), Err(ParseError::Nul));
    }
}
