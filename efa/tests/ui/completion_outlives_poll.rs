// A completion is lent by its polling pass and cannot escape it.
fn first(cq: &mut efa::Cq) -> u64 {
    let c = {
        let mut pass = cq.poll().unwrap().unwrap();
        pass.next().unwrap().unwrap()
    };
    c.wr_id()
}

fn main() {}
