//! Property: attenuation only narrows. A token with extra caveats never
//! allows a request its parent denies, and when both allow, the child's
//! budget, grants and use limit are within the parent's.

mod common;

use common::*;
use proptest::prelude::*;
use voidbox_auth::*;

fn caveat() -> impl Strategy<Value = Caveat> {
    prop_oneof![
        (1u8..4).prop_map(|b| Caveat::Tool(digest(b))),
        prop::sample::select(vec!["wc", "grep"]).prop_map(|n| Caveat::ToolName(n.to_owned())),
        (NOW - 1..NOW + 3).prop_map(Caveat::Expires),
        (0u64..6).prop_map(Caveat::Fuel),
        (0u64..6).prop_map(Caveat::Memory),
        (0u64..6).prop_map(Caveat::InputBytes),
        (0u64..6).prop_map(Caveat::OutputBytes),
        (0u64..3).prop_map(Caveat::Uses),
        prop::collection::btree_set((1u8..4).prop_map(digest), 1..3).prop_map(Caveat::Grant),
    ]
}

fn budget_value() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..7, Just(u64::MAX)]
}

#[derive(Debug, Clone)]
struct Ask {
    tool: u8,
    name: &'static str,
    now: u64,
    budget: Budget,
    input_bytes: u64,
    reads: Vec<Digest>,
}

fn ask() -> impl Strategy<Value = Ask> {
    (
        1u8..4,
        prop::sample::select(vec!["wc", "grep"]),
        NOW - 1..NOW + 3,
        (budget_value(), budget_value(), budget_value()),
        0u64..7,
        prop::collection::btree_set((1u8..4).prop_map(digest), 0..3),
    )
        .prop_map(
            |(tool, name, now, (fuel, memory_bytes, output_bytes), input_bytes, reads)| Ask {
                tool,
                name,
                now,
                budget: Budget {
                    fuel,
                    memory_bytes,
                    output_bytes,
                },
                input_bytes,
                reads: reads.into_iter().collect(),
            },
        )
}

fn subset(child: &Grants, parent: &Grants) -> bool {
    match (child, parent) {
        (_, Grants::Any) => true,
        (Grants::Any, Grants::Only(_)) => false,
        (Grants::Only(c), Grants::Only(p)) => c.is_subset(p),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_narrowed_token_never_allows_what_its_parent_denies(
        parent_caveats in prop::collection::vec(caveat(), 0..5),
        extra in prop::collection::vec(caveat(), 1..4),
        unknown in prop::bool::weighted(0.1),
        ask in ask(),
    ) {
        let f = Fixture::new();
        let parent = Token::mint(&f.key_id, &f.root, &parent_caveats, &mut seeded(9)).unwrap();
        let mut child = parent.attenuate(&extra).unwrap();
        if unknown {
            child = child.attenuate_raw("region = eu").unwrap();
        }
        let request = Request {
            tool_digest: digest(ask.tool),
            tool_name: ask.name,
            now_unix: ask.now,
            budget: ask.budget,
            input_bytes: ask.input_bytes,
            reads: &ask.reads,
        };
        let p = f.verify(&parent, &request);
        let c = f.verify(&child, &request);
        match (&p, &c) {
            (Err(_), Ok(_)) => prop_assert!(false, "child allowed what the parent denied: {p:?} {c:?}"),
            (Ok(p), Ok(c)) => {
                prop_assert!(c.budget.fuel <= p.budget.fuel);
                prop_assert!(c.budget.memory_bytes <= p.budget.memory_bytes);
                prop_assert!(c.budget.output_bytes <= p.budget.output_bytes);
                prop_assert!(subset(&c.grants, &p.grants));
                match (c.uses_limit, p.uses_limit) {
                    (Some(cu), Some(pu)) => prop_assert!(cu <= pu),
                    (None, Some(_)) => prop_assert!(false, "child lost the uses limit"),
                    _ => {}
                }
                prop_assert!(!unknown, "an unknown caveat must deny");
            }
            _ => {}
        }
        // Whatever the request, the folded limits only tighten.
        let (pl, cl) = (parent.limits().unwrap(), Limits::of(parent_caveats.iter().chain(&extra)));
        prop_assert!(pl.tools.is_subset(&cl.tools));
        prop_assert!(subset(&cl.grants, &pl.grants));
    }

    #[test]
    fn canonical_text_round_trips(c in caveat()) {
        let text = c.to_string();
        prop_assert_eq!(text.parse::<Caveat>().unwrap(), c);
    }
}
