// Nothing else can be posted on the QP while a batch is open.
fn post(qp: &mut efa::RcQp, sge: efa::Sge) {
    let batch = qp.batch().unwrap();
    qp.post_recv(1, &[sge]).unwrap();
    batch.commit().unwrap();
}

fn main() {}
