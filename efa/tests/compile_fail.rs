//! Lifetime and ownership rules the compiler enforces (trybuild): each file in `tests/ui` must
//! fail to compile with the error recorded beside it.

#[test]
fn lifetime_rules_are_enforced() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
