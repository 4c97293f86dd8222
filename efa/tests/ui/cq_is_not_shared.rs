// A CQ is polled through &mut by one owner: it is not Sync, so it cannot be polled from two
// threads through a shared reference.
fn need_sync<T: Sync>() {}

fn main() {
    need_sync::<efa::Cq>();
}
