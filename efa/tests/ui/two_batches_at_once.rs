// A batch holds its QP exclusively: a second batch cannot open while the first is alive.
fn post(qp: &mut efa::RcQp) {
    let first = qp.batch().unwrap();
    let second = qp.batch().unwrap();
    first.commit().unwrap();
    second.commit().unwrap();
}

fn main() {}
