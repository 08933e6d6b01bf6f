fn main() {
    for p in ["/tmp/sd.pth", "/tmp/nested.pth"] {
        println!(
            "{p}: {:?}",
            tch::Tensor::loadz_multi(p).map(|v| v
                .into_iter()
                .map(|(n, t)| (n, t.size()))
                .collect::<Vec<_>>())
        );
    }
}
