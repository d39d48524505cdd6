//! Parser and checker: good contracts with their canonical text, bad ones
//! with the exact message, position and caret excerpt.

use voidbox_contract::{ClauseKind, Contract, ParseError, CONTRACT_TEXT_BYTES_MAX};

/// Parses `src` and compares the canonical text with `expected`.
#[track_caller]
fn check_ok(src: &str, expected: &str) {
    let contract = Contract::parse(src).unwrap_or_else(|e| panic!("{src:?} should parse:\n{e}"));
    assert_eq!(
        contract.canonical_text(),
        expected,
        "canonical text of {src:?}"
    );
    // The canonical text is a fixed point: parsing it gives it back, with the
    // same digest.
    let again = Contract::parse(contract.canonical_text()).expect("canonical text parses");
    assert_eq!(again.canonical_text(), expected);
    assert_eq!(again.digest(), contract.digest());
}

/// Parses `src`, expects an error, and compares its full rendering.
#[track_caller]
fn check_err(src: &str, expected: &str) -> ParseError {
    let err = Contract::parse(src).expect_err("should not parse");
    assert_eq!(err.to_string(), expected, "error for {src:?}");
    err
}

#[test]
fn the_issue_examples_parse() {
    check_ok(
        "fuel <= 400 * input_bytes + 2_000_000\noutput_bytes <= input_bytes + 64",
        "fuel <= 400 * input_bytes + 2000000\noutput_bytes <= input_bytes + 64\n",
    );
}

#[test]
fn labels_semicolons_comments_and_blank_lines() {
    check_ok(
        "# a comment\n\ncost: fuel <= 10 ; out: output_bytes < 5 # trailing\n\n",
        "cost: fuel <= 10\nout: output_bytes < 5\n",
    );
}

#[test]
fn precedence_and_canonical_parentheses() {
    check_ok("fuel <= 1 + 2 * 3", "fuel <= 1 + 2 * 3\n");
    check_ok("fuel <= (1 + 2) * input_bytes", "fuel <= 3 * input_bytes\n");
    check_ok("fuel <= input_bytes * 3", "fuel <= 3 * input_bytes\n");
    check_ok("fuel <= 2 * 3 * input_bytes", "fuel <= 6 * input_bytes\n");
    check_ok(
        "fuel <= 2 * (3 * input_bytes)",
        "fuel <= 2 * (3 * input_bytes)\n",
    );
    check_ok(
        "fuel <= -2 * input_bytes + 9",
        "fuel <= -2 * input_bytes + 9\n",
    );
    check_ok(
        "fuel <= input_bytes - (1 - 2)",
        "fuel <= input_bytes - (1 - 2)\n",
    );
    check_ok(
        "fuel <= (input_bytes - 1) - 2",
        "fuel <= input_bytes - 1 - 2\n",
    );
    check_ok("fuel <= --input_bytes", "fuel <= --input_bytes\n");
    check_ok(
        "not fuel < 1 and fuel < 2 or fuel < 3",
        "not fuel < 1 and fuel < 2 or fuel < 3\n",
    );
    check_ok(
        "not (fuel < 1 and fuel < 2)",
        "not (fuel < 1 and fuel < 2)\n",
    );
    check_ok(
        "fuel < 1 or (fuel < 2 and fuel < 3)",
        "fuel < 1 or fuel < 2 and fuel < 3\n",
    );
    check_ok(
        "(fuel < 1 or fuel < 2) and fuel < 3",
        "(fuel < 1 or fuel < 2) and fuel < 3\n",
    );
    check_ok(
        "input_bytes > 5 => fuel > 1 => fuel > 2",
        "input_bytes > 5 => fuel > 1 => fuel > 2\n",
    );
    check_ok(
        "(input_bytes > 5 => fuel > 1) => fuel > 2",
        "(input_bytes > 5 => fuel > 1) => fuel > 2\n",
    );
    check_ok("true; false", "true\nfalse\n");
}

#[test]
fn if_then_else_on_numbers_and_conditions() {
    check_ok(
        "memory_bytes <= if input_bytes < 1_000 then 65_536 else 1_048_576",
        "memory_bytes <= (if input_bytes < 1000 then 65536 else 1048576)\n",
    );
    check_ok(
        "if input_bytes == 0 then output_bytes == 0 else output_bytes <= 2 * input_bytes",
        "if input_bytes == 0 then output_bytes == 0 else output_bytes <= 2 * input_bytes\n",
    );
    check_ok(
        "fuel <= (if args_bytes != 0 then 5 else 6) + 1",
        "fuel <= (if args_bytes != 0 then 5 else 6) + 1\n",
    );
}

#[test]
fn clauses_continue_across_lines_where_the_expression_is_unfinished() {
    check_ok(
        "fuel <= 400 * input_bytes\n       + 2_000_000\nout: output_bytes <=\n  64",
        "fuel <= 400 * input_bytes + 2000000\nout: output_bytes <= 64\n",
    );
    check_ok(
        "fuel <= (input_bytes\n+ 1)\nfuel >= 0 and\nfuel != 7",
        "fuel <= input_bytes + 1\nfuel >= 0 and fuel != 7\n",
    );
}

#[test]
fn describe_for_inspect() {
    let contract =
        Contract::parse("small: input_bytes <= 16_777_216\nfuel <= 400 * input_bytes").unwrap();
    assert_eq!(
        contract.describe(),
        "precondition `small`: input_bytes <= 16777216\npostcondition clause 2 (line 2): fuel <= 400 * input_bytes\n"
    );
}

#[test]
fn clauses_are_classified_by_the_variables_they_mention() {
    let contract = Contract::parse(
        "pre: input_bytes <= 100 and args_bytes <= 10\ncost: fuel <= input_bytes\nconstant: true",
    )
    .unwrap();
    let kinds: Vec<_> = contract.clauses().iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ClauseKind::Precondition,
            ClauseKind::Postcondition,
            ClauseKind::Precondition
        ]
    );
    assert_eq!(contract.clauses()[1].name(), "`cost`");
    let unlabelled = Contract::parse("true\n\nfuel <= 1").unwrap();
    assert_eq!(unlabelled.clauses()[1].name(), "clause 2 (line 3)");
}

#[test]
fn spellings_of_one_contract_share_a_digest() {
    let a = Contract::parse("fuel <= 400 * input_bytes + 2_000_000").unwrap();
    let b = Contract::parse("fuel<=(input_bytes*400)+2000000   # same").unwrap();
    let c = Contract::parse("fuel <= 401 * input_bytes + 2_000_000").unwrap();
    assert_eq!(a.digest(), b.digest());
    assert_ne!(a.digest(), c.digest());
    assert!(a.digest_string().starts_with("blake3:"));
    assert_eq!(a.digest_string().len(), 7 + 64);
}

#[test]
fn unknown_variable() {
    check_err(
        "fuel <= 400 * input_size",
        "line 1, column 15: unknown variable `input_size`; the variables are input_bytes, args_bytes, output_bytes, fuel, memory_bytes\n  fuel <= 400 * input_size\n                ^^^^^^^^^^",
    );
}

#[test]
fn missing_operand_at_end_of_line() {
    check_err(
        "cost: fuel <= 400 *",
        "line 1, column 20: expected a number, a variable, `(` or `if`, found the end of the contract\n  cost: fuel <= 400 *\n                     ^",
    );
}

#[test]
fn error_on_a_later_line_points_at_that_line() {
    check_err(
        "fuel <= 10\noutput_bytes <= 5 5",
        "line 2, column 19: expected the end of the clause (a new line or `;`), found `5`\n  output_bytes <= 5 5\n                    ^",
    );
}

#[test]
fn unclosed_parenthesis() {
    check_err(
        "fuel <= (1 + 2\n",
        "line 2, column 1: expected `)` to close the `(` opened before, found the end of the contract\n  \n  ^",
    );
}

#[test]
fn single_equals_sign() {
    check_err(
        "fuel = 5",
        "line 1, column 6: a single `=` is not an operator: write `==` for equality or `=>` for implication\n  fuel = 5\n       ^",
    );
}

#[test]
fn chained_comparisons() {
    check_err(
        "0 <= fuel <= 5",
        "line 1, column 11: comparisons do not chain: write `a <= b and b <= c` instead of `a <= b <= c`\n  0 <= fuel <= 5\n            ^^",
    );
}

#[test]
fn non_linear_multiplication_is_rejected() {
    check_err(
        "fuel <= input_bytes * input_bytes",
        "line 1, column 21: non-linear: this `*` multiplies two terms that both mention variables (input_bytes and input_bytes); contracts are linear, so one side of `*` must be a constant\n  fuel <= input_bytes * input_bytes\n                      ^",
    );
    check_err(
        "fuel <= (args_bytes + 1) * (input_bytes + 2)",
        "line 1, column 26: non-linear: this `*` multiplies two terms that both mention variables (args_bytes and input_bytes); contracts are linear, so one side of `*` must be a constant\n  fuel <= (args_bytes + 1) * (input_bytes + 2)\n                           ^",
    );
    // A product with a variable-free side is linear, however it is written.
    check_ok(
        "fuel <= (2 - 1) * (input_bytes + 2)",
        "fuel <= 1 * (input_bytes + 2)\n",
    );
}

#[test]
fn types_numbers_and_conditions() {
    check_err(
        "fuel + 1",
        "line 1, column 1: expected a condition here, found a number; compare it, like `fuel <= 1_000_000`\n  fuel + 1\n  ^^^^^^^^",
    );
    check_err(
        "fuel <= (fuel < 2)",
        "line 1, column 9: expected a number here, found a condition\n  fuel <= (fuel < 2)\n          ^^^^^^^^^^",
    );
    check_err(
        "fuel <= if true then 1 else fuel < 3",
        "line 1, column 29: the branches of `if` must both be numbers or both be conditions; this one is a condition\n  fuel <= if true then 1 else fuel < 3\n                              ^^^^^^^^",
    );
    check_err(
        "not 3",
        "line 1, column 5: expected a condition here, found a number; compare it, like `fuel <= 1_000_000`\n  not 3\n      ^",
    );
}

#[test]
fn if_needs_then_and_else() {
    check_err(
        "fuel <= if input_bytes < 3 then 4",
        "line 1, column 34: expected `else`: every `if` needs one, found the end of the contract\n  fuel <= if input_bytes < 3 then 4\n                                   ^",
    );
    check_err(
        "fuel <= if input_bytes < 3 4 else 5",
        "line 1, column 28: expected `then` after the condition of `if`, found `4`\n  fuel <= if input_bytes < 3 4 else 5\n                             ^",
    );
}

#[test]
fn labels_must_be_unique_and_not_reserved() {
    check_err(
        "a: fuel <= 1\na: fuel <= 2",
        "line 2, column 1: the label `a` is used twice; labels name clauses in messages, so make them unique\n  a: fuel <= 2\n  ^",
    );
    check_err(
        "fuel: fuel <= 1",
        "line 1, column 1: `fuel` is a reserved word and cannot label a clause; pick another label\n  fuel: fuel <= 1\n  ^^^^",
    );
}

#[test]
fn empty_contract() {
    check_err(
        "# nothing here\n",
        "line 2, column 1: the contract has no clauses; write at least one, like `fuel <= 1_000_000`\n  \n  ^",
    );
}

#[test]
fn odd_characters_and_numbers() {
    check_err(
        "fuel <= 1.5",
        "line 1, column 9: not a number: integers are digits with optional `_` separators, like 2_000_000\n  fuel <= 1.5\n          ^^^",
    );
    check_err(
        "fuel <= 10 % 3",
        "line 1, column 12: unexpected character `%`\n  fuel <= 10 % 3\n             ^",
    );
    // Columns count characters, not bytes.
    check_err(
        "fuel <= 1 é",
        "line 1, column 11: unexpected character `é`\n  fuel <= 1 é\n            ^",
    );
}

#[test]
fn overflow_is_rejected_when_parsing() {
    // Literals are at most u64::MAX.
    check_ok(
        "fuel <= 18_446_744_073_709_551_615",
        "fuel <= 18446744073709551615\n",
    );
    check_err(
        "fuel <= 18_446_744_073_709_551_616",
        "line 1, column 9: integer literal is too large: the largest is 18446744073709551615\n  fuel <= 18_446_744_073_709_551_616\n          ^^^^^^^^^^^^^^^^^^^^^^^^^^",
    );
    // (2^63 - 1) * u64::MAX stays below 2^127...
    check_ok(
        "fuel <= 9223372036854775807 * input_bytes",
        "fuel <= 9223372036854775807 * input_bytes\n",
    );
    // ...but twice that does not: some run figures would overflow i128.
    check_err(
        "fuel <= 2 * (9223372036854775807 * input_bytes)",
        "line 1, column 11: this arithmetic can leave the 128-bit range for some run figures; use smaller constants\n  fuel <= 2 * (9223372036854775807 * input_bytes)\n            ^",
    );
    check_err(
        "fuel <= 18446744073709551615 * input_bytes",
        "line 1, column 30: this arithmetic can leave the 128-bit range for some run figures; use smaller constants\n  fuel <= 18446744073709551615 * input_bytes\n                               ^",
    );
    // Folding constants overflows too: the first product is already 2^128.
    check_err(
        "fuel <= 18446744073709551615 * 18446744073709551615 * input_bytes",
        "line 1, column 30: this arithmetic can leave the 128-bit range for some run figures; use smaller constants\n  fuel <= 18446744073709551615 * 18446744073709551615 * input_bytes\n                               ^",
    );
}

#[test]
fn nesting_and_size_limits() {
    let deep = format!("fuel <= {}1{}", "(".repeat(200), ")".repeat(200));
    let err = Contract::parse(&deep).expect_err("too deep");
    assert!(err.message.contains("nested more than 100 levels"), "{err}");
    let long_chain = format!("fuel <= 1{}", " + 1".repeat(150));
    let err = Contract::parse(&long_chain).expect_err("too deep");
    assert!(err.message.contains("nested more than 100 levels"), "{err}");
    for hostile in [
        format!("{}fuel <= 1", "not ".repeat(500)),
        format!("fuel <= {}1", "-".repeat(500)),
        format!(
            "fuel <= {}1{}",
            "if true then ".repeat(300),
            " else 2".repeat(300)
        ),
        format!("fuel <= 1{}", " and fuel <= 1".repeat(150)),
    ] {
        let err = Contract::parse(&hostile).expect_err("too deep");
        assert!(err.message.contains("nested more than 100 levels"), "{err}");
    }
    // Many short clauses are fine.
    let many = "fuel <= 1\n".repeat(1000);
    assert_eq!(Contract::parse(&many).unwrap().clauses().len(), 1000);
    let huge = "true\n".repeat(CONTRACT_TEXT_BYTES_MAX / 5 + 1);
    let err = Contract::parse(&huge).expect_err("too large");
    assert!(err.message.contains("the limit is 65536 bytes"), "{err}");
}

#[test]
fn regression_folded_coefficient_beyond_u64_prints_as_parseable_text() {
    // Folding `M * 3` gives a coefficient no literal can hold; the canonical
    // text spells it as a constant expression that folds back to it.
    check_ok(
        "fuel >= 18446744073709551615 * 3 * 2",
        "fuel >= (3 * 18446744073709551615 + 0) * 2\n",
    );
    check_ok(
        "fuel >= -(18446744073709551615 * 2 + 7) * 1",
        "fuel >= -(2 * 18446744073709551615 + 7) * 1\n",
    );
}

#[test]
fn regression_constant_if_as_a_factor_uses_the_taken_branch() {
    // A variable-free `if` spans both branches; the coefficient must be the
    // branch actually taken, not the low end of that span.
    check_ok(
        "fuel <= (if false then 2 else 3) * input_bytes",
        "fuel <= 3 * input_bytes\n",
    );
    let c = Contract::parse("fuel <= (if false then 2 else 3) * input_bytes").unwrap();
    let run = |fuel| voidbox_contract::Figures {
        input_bytes: 10,
        fuel,
        ..Default::default()
    };
    assert!(c.check_post(&run(30)).is_ok());
    assert!(c.check_post(&run(31)).is_err());
}
