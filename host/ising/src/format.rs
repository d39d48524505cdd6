//! Plain-text model files and the one-call solve used by the CLI.
//!
//! Four formats, told apart by the first non-comment line. Lines may carry a
//! `#` comment; blank lines are skipped. Numbers are decimal (weights may be
//! real, e.g. `-1.5` or `2e3`).
//!
//! * **Max-cut edge list** (the G-set format): a first line `N E`, then `E`
//!   lines `i j w` with 1-based nodes. The model is the Ising model
//!   `E(s) = Σ w_ij (s_i s_j - 1) / 2`, whose energy is minus the cut: its
//!   ground state is a maximum cut. Repeated edges add up; a self-loop is an
//!   error (it can never be cut).
//! * **QUBO list**: a first line `qubo N`, then lines `i j q` with 0-based
//!   variables; `i == j` is the linear term `q x_i`, otherwise `q x_i x_j`
//!   (entries for `(i, j)` and `(j, i)` add up). An optional line `offset c`
//!   adds a constant.
//! * **qbsolv `.qubo`**: `c` comment lines, a line `p qubo 0 maxNodes nNodes
//!   nCouplers`, then `nNodes` lines `i i q` and `nCouplers` lines `i j q`,
//!   0-based (read as a QUBO).
//! * **Ising list**: a first line `ising N`, then lines `i j v`, 0-based;
//!   `i == j` is the field `v s_i`, otherwise the coupling `v s_i s_j`; an
//!   optional `offset c` line.

use std::io::Read;

use serde::Serialize;
use thiserror::Error;

use crate::anneal::{anneal, AnnealError, Params};
use crate::model::{spins_to_bits, IsingModel, ModelError, QuboModel};

/// A model file that could not be read.
#[derive(Debug, Error)]
pub enum ParseError {
    /// A line is malformed; `line` is 1-based.
    #[error("line {line}: {message}")]
    Line {
        /// The 1-based line number.
        line: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The file has no header line.
    #[error("the file is empty: expected a header `N E` (max-cut), `qubo N` or `ising N`")]
    Empty,
    /// The terms are valid lines but not a valid model.
    #[error("invalid model: {0}")]
    Model(#[from] ModelError),
    /// Reading failed.
    #[error("could not read the model: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed model file.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// A max-cut instance: its Ising form (energy = -cut).
    MaxCut {
        /// Nodes of the graph.
        nodes: usize,
        /// Edges as listed (before merging repeats).
        edges: usize,
        /// The Ising model whose energy is minus the cut.
        model: IsingModel,
    },
    /// A QUBO.
    Qubo(QuboModel),
    /// An Ising model.
    Ising(IsingModel),
}

fn line_err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError::Line {
        line,
        message: message.into(),
    }
}

/// The meaningful lines: (1-based number, fields), comments and blanks removed.
fn tokens(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(k, l)| {
        let l = l.split('#').next().unwrap_or("");
        let f: Vec<&str> = l.split_whitespace().collect();
        (!f.is_empty()).then_some((k + 1, f))
    })
}

/// One `i j value` line of a QUBO, Ising or qbsolv file: two 0-based
/// variables below `n` and a coefficient. `bound` names what `n` is, for
/// the message (`variables are 0..` or `maxNodes is `).
fn parse_entry(
    line: usize,
    f: &[&str],
    n: usize,
    bound: &str,
) -> Result<(usize, usize, f64), ParseError> {
    if f.len() != 3 {
        return Err(line_err(
            line,
            format!("expected `i j value` (3 fields), found {} fields", f.len()),
        ));
    }
    let i = parse_count(line, "variable", f[0])?;
    let j = parse_count(line, "variable", f[1])?;
    let v = parse_number(line, "coefficient", f[2])?;
    for x in [i, j] {
        if x >= n {
            return Err(line_err(
                line,
                format!("variable {x} is out of range: {bound}{n} (0-based)"),
            ));
        }
    }
    Ok((i, j, v))
}

fn parse_count(line: usize, what: &str, s: &str) -> Result<usize, ParseError> {
    s.parse::<usize>()
        .map_err(|_| line_err(line, format!("{what} `{s}` is not a non-negative integer")))
}

fn parse_number(line: usize, what: &str, s: &str) -> Result<f64, ParseError> {
    let v = s
        .parse::<f64>()
        .map_err(|_| line_err(line, format!("{what} `{s}` is not a number")))?;
    if !v.is_finite() {
        return Err(line_err(line, format!("{what} `{s}` is not finite")));
    }
    if v.abs() > crate::model::COEFFICIENT_MAX {
        return Err(line_err(
            line,
            format!(
                "{what} `{s}` is larger than {:e}: rescale the model",
                crate::model::COEFFICIENT_MAX
            ),
        ));
    }
    Ok(v)
}

/// Upper bound on declared sizes, so a hostile header cannot make us allocate
/// gigabytes before a single term is read.
pub const VARIABLES_MAX: usize = 1 << 22;

/// Parses a model file (see the module docs for the formats).
pub fn parse_problem(text: &str) -> Result<Problem, ParseError> {
    let mut lines = tokens(text).peekable();
    // qbsolv's format starts with `c` comment lines before its `p` line.
    let qbsolv = lines
        .peek()
        .is_some_and(|(_, f)| f[0] == "c" || f[0] == "p");
    if qbsolv {
        return parse_qbsolv(lines.filter(|(_, f)| f[0] != "c"));
    }
    let (hline, header) = lines.next().ok_or(ParseError::Empty)?;
    let kind = header[0].to_ascii_lowercase();
    if kind == "qubo" || kind == "ising" {
        if header.len() != 2 {
            return Err(line_err(
                hline,
                format!("the header should be `{kind} N` (N variables)"),
            ));
        }
        let n = parse_count(hline, "the number of variables", header[1])?;
        if n > VARIABLES_MAX {
            return Err(line_err(
                hline,
                format!("{n} variables is more than the {VARIABLES_MAX} supported"),
            ));
        }
        let mut b = if kind == "qubo" {
            QuboModel::builder(n)
        } else {
            IsingModel::builder(n)
        };
        for (line, f) in lines {
            if f[0].eq_ignore_ascii_case("offset") {
                if f.len() != 2 {
                    return Err(line_err(line, "an offset line is `offset c`"));
                }
                b.offset(parse_number(line, "the offset", f[1])?);
                continue;
            }
            let (i, j, v) = parse_entry(line, &f, n, "variables are 0..")?;
            if i == j {
                b.linear(i, v);
            } else {
                b.quadratic(i, j, v);
            }
        }
        return Ok(if kind == "qubo" {
            Problem::Qubo(b.build_qubo()?)
        } else {
            Problem::Ising(b.build_ising()?)
        });
    }
    if header.len() != 2 {
        return Err(line_err(
            hline,
            "the header should be `N E` (max-cut edge list), `qubo N` or `ising N`",
        ));
    }
    let nodes = parse_count(hline, "the number of nodes", header[0])?;
    let edges = parse_count(hline, "the number of edges", header[1])?;
    if nodes > VARIABLES_MAX {
        return Err(line_err(
            hline,
            format!("{nodes} nodes is more than the {VARIABLES_MAX} supported"),
        ));
    }
    let mut b = IsingModel::builder(nodes);
    let mut seen = 0usize;
    let mut last_line = hline;
    for (line, f) in lines {
        last_line = line;
        if f.len() != 3 {
            return Err(line_err(
                line,
                format!(
                    "expected an edge `i j w` (3 fields), found {} fields",
                    f.len()
                ),
            ));
        }
        let i = parse_count(line, "node", f[0])?;
        let j = parse_count(line, "node", f[1])?;
        let w = parse_number(line, "weight", f[2])?;
        for x in [i, j] {
            if x == 0 || x > nodes {
                return Err(line_err(
                    line,
                    format!("node {x} is out of range: nodes are 1..={nodes} (1-based)"),
                ));
            }
        }
        if i == j {
            return Err(line_err(
                line,
                format!("edge {i} {i} is a self-loop, which no cut can contain: remove it"),
            ));
        }
        seen += 1;
        if seen > edges {
            return Err(line_err(
                line,
                format!("more edges than the {edges} the header declares"),
            ));
        }
        // w (s_i s_j - 1) / 2 is -w when the edge is cut and 0 otherwise.
        b.quadratic(i - 1, j - 1, w / 2.0);
        b.offset(-w / 2.0);
    }
    if seen != edges {
        return Err(line_err(
            last_line,
            format!("the header declares {edges} edges but the file has {seen}"),
        ));
    }
    Ok(Problem::MaxCut {
        nodes,
        edges,
        model: b.build_ising()?,
    })
}

/// The qbsolv `.qubo` format: `p qubo 0 maxNodes nNodes nCouplers`, then
/// `nNodes` diagonal lines `i i q` and `nCouplers` lines `i j q` (0-based).
fn parse_qbsolv<'a>(
    mut lines: impl Iterator<Item = (usize, Vec<&'a str>)>,
) -> Result<Problem, ParseError> {
    let (hline, header) = lines.next().ok_or(ParseError::Empty)?;
    if header.len() != 6 || header[0] != "p" || header[1] != "qubo" {
        return Err(line_err(
            hline,
            "a qbsolv header is `p qubo 0 maxNodes nNodes nCouplers`",
        ));
    }
    let n = parse_count(hline, "maxNodes", header[3])?;
    let nodes = parse_count(hline, "nNodes", header[4])?;
    let couplers = parse_count(hline, "nCouplers", header[5])?;
    if n > VARIABLES_MAX {
        return Err(line_err(
            hline,
            format!("{n} variables is more than the {VARIABLES_MAX} supported"),
        ));
    }
    let mut b = QuboModel::builder(n);
    let (mut seen_nodes, mut seen_couplers) = (0usize, 0usize);
    let mut last_line = hline;
    for (line, f) in lines {
        last_line = line;
        let (i, j, v) = parse_entry(line, &f, n, "maxNodes is ")?;
        if i == j {
            seen_nodes += 1;
            b.linear(i, v);
        } else {
            seen_couplers += 1;
            b.quadratic(i, j, v);
        }
    }
    if (seen_nodes, seen_couplers) != (nodes, couplers) {
        return Err(line_err(
            last_line,
            format!(
                "the header declares {nodes} diagonal and {couplers} coupler lines, the file has {seen_nodes} and {seen_couplers}"
            ),
        ));
    }
    Ok(Problem::Qubo(b.build_qubo()?))
}

/// Reads and parses a model file.
pub fn read_problem(mut reader: impl Read) -> Result<Problem, ParseError> {
    let mut text = String::new();
    reader.read_to_string(&mut text)?;
    parse_problem(&text)
}

/// What `voidbox ising solve` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SolveReport {
    /// `maxcut`, `qubo` or `ising`.
    pub format: &'static str,
    /// Number of variables (nodes for max-cut).
    pub variables: usize,
    /// Number of distinct nonzero couplings.
    pub couplings: usize,
    /// The best energy (offset included; minus the cut for max-cut).
    pub energy: f64,
    /// The cut value, for a max-cut input.
    pub cut: Option<f64>,
    /// The state: `0`/`1` bits for QUBO, `+1`/`-1` spins otherwise (for
    /// max-cut, the two sides of the cut).
    pub state: Vec<i8>,
    /// Final energy of each read.
    pub read_energies: Vec<f64>,
    /// Sweeps per read.
    pub sweeps: usize,
    /// Reads.
    pub reads: usize,
    /// Master seed.
    pub seed: u64,
    /// Threads used.
    pub threads: usize,
    /// β range used (hot, cold).
    pub beta_range: (f64, f64),
    /// Metropolis tests made.
    pub flip_attempts: u64,
    /// Tests that flipped a spin.
    pub flips_accepted: u64,
    /// Wall-clock seconds for annealing (model layout included, parsing not).
    pub elapsed_seconds: Option<f64>,
    /// Flip attempts per second.
    pub flip_attempts_per_second: Option<f64>,
}

/// Why a file could not be solved.
#[derive(Debug, Error)]
pub enum SolveError {
    /// The file is malformed.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The parameters are invalid.
    #[error(transparent)]
    Anneal(#[from] AnnealError),
}

/// Parses `text` and anneals it: what `voidbox ising solve FILE` does.
pub fn solve_text(text: &str, params: &Params) -> Result<SolveReport, SolveError> {
    let problem = parse_problem(text)?;
    Ok(solve_problem(&problem, params)?)
}

/// Anneals a parsed problem.
pub fn solve_problem(problem: &Problem, params: &Params) -> Result<SolveReport, AnnealError> {
    let converted;
    let (format, model) = match problem {
        Problem::MaxCut { model, .. } => ("maxcut", model),
        Problem::Ising(m) => ("ising", m),
        Problem::Qubo(q) => {
            converted = q.to_ising();
            ("qubo", &converted)
        }
    };
    let sol = anneal(model, params)?;
    let (cut, state) = match problem {
        // `0.0 - e` rather than `-e` so an empty graph reports a cut of 0, not -0.
        Problem::MaxCut { .. } => (Some(0.0 - sol.energy), sol.state.clone()),
        Problem::Ising(_) => (None, sol.state.clone()),
        Problem::Qubo(_) => (
            None,
            spins_to_bits(&sol.state)
                .into_iter()
                .map(|b| b as i8)
                .collect(),
        ),
    };
    Ok(SolveReport {
        format,
        variables: model.len(),
        couplings: model.couplings().len(),
        energy: sol.energy,
        cut,
        state,
        read_energies: sol.read_energies.clone(),
        sweeps: params.sweeps,
        reads: params.reads,
        seed: params.seed,
        threads: params.threads.min(params.reads),
        beta_range: sol.stats.beta_range,
        flip_attempts: sol.stats.flip_attempts,
        flips_accepted: sol.stats.flips_accepted,
        elapsed_seconds: sol.stats.elapsed.map(|d| d.as_secs_f64()),
        flip_attempts_per_second: sol.stats.attempts_per_second(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(e: ParseError) -> usize {
        match e {
            ParseError::Line { line, .. } => line,
            other => panic!("expected a line error, got {other}"),
        }
    }

    #[test]
    fn max_cut_of_a_square_with_a_diagonal() {
        // 4-cycle 1-2-3-4 plus diagonal 1-3: the best cut separates {1,3}
        // from {2,4} and cuts the 4 cycle edges (weight 4).
        let text = "# a square\n4 5\n1 2 1\n2 3 1\n3 4 1\n4 1 1\n1 3 1\n";
        let report = solve_text(
            text,
            &Params {
                sweeps: 100,
                reads: 4,
                ..Params::default()
            },
        )
        .unwrap();
        assert_eq!(report.format, "maxcut");
        assert_eq!(report.cut, Some(4.0));
        assert_eq!(report.energy, -4.0);
        let s = &report.state;
        assert_eq!(s[0], s[2]);
        assert_eq!(s[1], s[3]);
        assert_ne!(s[0], s[1]);
    }

    #[test]
    fn qubo_file_with_offset() {
        let text = "qubo 3\n0 0 1\n1 1 1\n0 1 -3\n2 2 -0.5\noffset 2\n";
        let report = solve_text(text, &Params::default()).unwrap();
        assert_eq!(report.format, "qubo");
        assert_eq!(report.state, vec![1, 1, 1]);
        assert_eq!(report.energy, 0.5);
        assert_eq!(report.cut, None);
    }

    #[test]
    fn qbsolv_file() {
        let text = "c a qbsolv file\np qubo 0 3 2 1\nc diagonal\n0 0 1\n1 1 1\n0 1 -3\n";
        let report = solve_text(text, &Params::default()).unwrap();
        assert_eq!(report.format, "qubo");
        assert_eq!(report.energy, -1.0);
        assert_eq!(&report.state[..2], &[1, 1]);
        assert_eq!(
            line_of(parse_problem("p qubo 0 3 1 1\n0 0 1\n").unwrap_err()),
            2
        );
        assert_eq!(line_of(parse_problem("p qubo 0 3\n").unwrap_err()), 1);
        assert_eq!(
            line_of(parse_problem("c x\np qubo 0 2 0 1\n0 2 1\n").unwrap_err()),
            3
        );
    }

    #[test]
    fn ising_file() {
        let text = "ising 2\n0 0 1\n0 1 -2\n";
        let report = solve_text(text, &Params::default()).unwrap();
        assert_eq!(report.state, vec![-1, -1]);
        assert_eq!(report.energy, -3.0);
    }

    #[test]
    fn errors_name_the_line() {
        assert!(matches!(parse_problem(""), Err(ParseError::Empty)));
        assert!(matches!(
            parse_problem("# only a comment\n\n"),
            Err(ParseError::Empty)
        ));
        assert_eq!(
            line_of(parse_problem("3 2\n1 2 1\n1 x 1\n").unwrap_err()),
            3
        );
        assert_eq!(line_of(parse_problem("3 1\n\n1 4 1\n").unwrap_err()), 3);
        assert_eq!(line_of(parse_problem("3 1\n1 0 1\n").unwrap_err()), 2);
        assert_eq!(line_of(parse_problem("3 1\n2 2 1\n").unwrap_err()), 2);
        assert_eq!(line_of(parse_problem("3 2\n1 2 1\n").unwrap_err()), 2);
        assert_eq!(
            line_of(parse_problem("3 1\n1 2 1\n2 3 1\n").unwrap_err()),
            3
        );
        assert_eq!(line_of(parse_problem("3 1\n1 2 nan\n").unwrap_err()), 2);
        assert_eq!(line_of(parse_problem("3 1\n1 2 1e308\n").unwrap_err()), 2);
        assert_eq!(line_of(parse_problem("3 1\n1 2\n").unwrap_err()), 2);
        assert_eq!(line_of(parse_problem("qubo 2\n0 2 1\n").unwrap_err()), 2);
        assert_eq!(line_of(parse_problem("qubo\n").unwrap_err()), 1);
        assert_eq!(line_of(parse_problem("qubo 2\n0 1 inf\n").unwrap_err()), 2);
        assert_eq!(line_of(parse_problem("qubo 2\noffset\n").unwrap_err()), 2);
        assert_eq!(line_of(parse_problem("ising -1\n").unwrap_err()), 1);
        assert_eq!(line_of(parse_problem("99999999999 1\n").unwrap_err()), 1);
        let msg = parse_problem("3 1\n1 4 1\n").unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("1..=3"), "{msg}");
    }

    /// Garbage in: an error, never a panic.
    #[test]
    fn random_garbage_never_panics() {
        let words = [
            "qubo",
            "ising",
            "offset",
            "3",
            "0",
            "1",
            "-1",
            "2.5",
            "1e308",
            "-1e308",
            "nan",
            "x",
            "#",
            "99999999999999999999",
            "\t",
        ];
        let mut r = crate::rng::Rng::new(5);
        let mut parsed = 0;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..r.below(6) {
                for _ in 0..r.below(5) {
                    text.push_str(words[r.below(words.len() as u64) as usize]);
                    text.push(' ');
                }
                text.push('\n');
            }
            if let Ok(p) = parse_problem(&text) {
                parsed += 1;
                let _ = solve_problem(
                    &p,
                    &Params {
                        sweeps: 5,
                        reads: 1,
                        ..Params::default()
                    },
                )
                .unwrap();
            }
        }
        assert!(parsed > 0);
    }

    #[test]
    fn empty_graph_and_empty_qubo_are_well_defined() {
        let r = solve_text("0 0\n", &Params::default()).unwrap();
        assert_eq!((r.energy, r.cut, r.state.len()), (0.0, Some(0.0), 0));
        let r = solve_text("qubo 0\noffset 3\n", &Params::default()).unwrap();
        assert_eq!(r.energy, 3.0);
        let r = read_problem("2 1\n1 2 2.5\n".as_bytes()).unwrap();
        assert!(matches!(
            r,
            Problem::MaxCut {
                nodes: 2,
                edges: 1,
                ..
            }
        ));
    }
}
