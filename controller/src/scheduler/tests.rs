use super::*;

const GIB: u64 = 1024 * 1024 * 1024;

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn id(s: &str) -> ExperimentId {
    ExperimentId::new(s).unwrap()
}

fn label(k: &str, v: &str) -> (LabelKey, LabelValue) {
    (LabelKey::new(k).unwrap(), LabelValue::new(v).unwrap())
}

fn mode(id: u32, name: &str, needs_reboot: bool) -> ModeInfo {
    ModeInfo {
        id,
        name: name.to_owned(),
        needs_reboot,
    }
}

/// A cool, idle, connected AGX Orin with 4 slots.
fn node(n: &str) -> NodeView {
    NodeView {
        name: name(n),
        link: Link::Fresh,
        cordoned: false,
        draining: false,
        thermal: Thermal::Normal,
        accepting: true,
        hottest_c: Some(40.0),
        warn_c: 75.0,
        memory_total: 32 * GIB,
        memory_reserved: 0,
        slots_used: 0,
        slots_max: 4,
        cpu_cores: 8,
        cpu_percent: 10.0,
        labels: [label("model", "agx-orin")].into_iter().collect(),
        power_modes: vec![
            mode(0, "MAXN", false),
            mode(1, "MODE_15W", false),
            mode(2, "MODE_30W", true),
        ],
        power_mode: Some(0),
        modes_in_use: BTreeSet::new(),
        gpu: true,
    }
}

fn pending(i: &str, priority: u32, seq: u64) -> Pending {
    Pending {
        id: id(i),
        seq,
        req: Requirements {
            priority,
            ..Requirements::default()
        },
    }
}

fn policy(name: PolicyName) -> Policy {
    Policy {
        policy: name,
        ..Policy::default()
    }
}

/// The rejections of one node for one experiment, through `plan`.
fn rejections(p: &Pending, n: &NodeView) -> Vec<Rejection> {
    let d = plan(
        std::slice::from_ref(p),
        std::slice::from_ref(n),
        &Policy::default(),
    );
    d[0].verdicts[0].rejections.clone()
}

fn texts(p: &Pending, n: &NodeView) -> Vec<String> {
    rejections(p, n).iter().map(ToString::to_string).collect()
}

fn placed_on(d: &Decision) -> Option<&str> {
    d.node().map(NodeName::as_str)
}

// Filters.

#[test]
fn a_cool_idle_node_passes_every_filter() {
    assert_eq!(rejections(&pending("a", 0, 1), &node("n1")), vec![]);
}

#[test]
fn a_node_must_be_connected_and_fresh() {
    let p = pending("a", 0, 1);
    let mut n = node("n1");
    n.link = Link::Stale;
    assert_eq!(texts(&p, &n), ["telemetry is stale"]);
    n.link = Link::Down;
    assert_eq!(texts(&p, &n), ["not connected"]);
    assert_eq!(rejections(&p, &n)[0].filter(), Filter::Link);
}

#[test]
fn cordoned_and_draining_nodes_take_nothing() {
    let p = pending("a", 0, 1);
    let mut n = node("n1");
    n.cordoned = true;
    assert_eq!(rejections(&p, &n), [Rejection::Cordoned]);
    n.cordoned = false;
    n.draining = true;
    assert_eq!(rejections(&p, &n), [Rejection::Draining]);
}

#[test]
fn a_node_whose_guard_refuses_work_takes_nothing() {
    let p = pending("a", 0, 1);
    let mut n = node("n1");
    n.thermal = Thermal::Warn;
    n.accepting = false;
    assert_eq!(
        texts(&p, &n),
        ["its thermal guard refuses new work (thermal state warn)"]
    );
    // The guard's word alone is enough, whatever the reported state.
    n.thermal = Thermal::Normal;
    assert_eq!(rejections(&p, &n)[0].filter(), Filter::Thermal);
    n.accepting = true;
    n.thermal = Thermal::Unknown;
    assert_eq!(texts(&p, &n), ["thermal state is unknown"]);
}

#[test]
fn too_hot_is_at_or_above_warn_minus_margin() {
    let p = pending("a", 0, 1);
    let mut n = node("n1");
    n.hottest_c = Some(73.5);
    assert_eq!(texts(&p, &n), ["too hot: 73.5 °C ≥ warn 75.0 − margin 5.0"]);
    n.hottest_c = Some(70.0);
    assert_eq!(rejections(&p, &n)[0].filter(), Filter::Temperature);
    n.hottest_c = Some(69.9);
    assert_eq!(rejections(&p, &n), []);
    n.hottest_c = None;
    assert_eq!(texts(&p, &n), ["no thermal zone reads a temperature"]);
}

#[test]
fn the_margin_comes_from_the_policy() {
    let mut n = node("n1");
    n.hottest_c = Some(72.0);
    let p = pending("a", 0, 1);
    let strict = plan(
        std::slice::from_ref(&p),
        std::slice::from_ref(&n),
        &Policy::default(),
    );
    assert!(!strict[0].verdicts[0].fits());
    let lax = Policy {
        temp_margin_c: 2.0,
        ..Policy::default()
    };
    let d = plan(&[p], &[n], &lax);
    assert_eq!(placed_on(&d[0]), Some("n1"));
}

#[test]
fn an_experiment_may_ask_for_a_cooler_node() {
    let mut p = pending("a", 0, 1);
    p.req.max_temp_c = Some(55.0);
    let mut n = node("n1");
    n.hottest_c = Some(60.0);
    assert_eq!(
        texts(&p, &n),
        ["too hot for this experiment: 60.0 °C ≥ its max_temp_c 55.0"]
    );
    n.hottest_c = Some(54.0);
    assert_eq!(rejections(&p, &n), []);
}

#[test]
fn memory_is_what_placed_experiments_have_not_reserved() {
    let mut p = pending("a", 0, 1);
    p.req.memory_max = Some(8 * GIB);
    let mut n = node("n1");
    n.memory_reserved = 26 * GIB;
    assert_eq!(
        texts(&p, &n),
        ["not enough memory: needs 8.0 GiB, 6.0 GiB of 32.0 GiB unreserved"]
    );
    n.memory_reserved = 24 * GIB;
    assert_eq!(rejections(&p, &n), [], "exactly enough fits");
    // Reservations never go negative, even if they overflow the node.
    n.memory_reserved = 40 * GIB;
    assert!(matches!(
        rejections(&p, &n)[0],
        Rejection::Memory { unreserved: 0, .. }
    ));
}

#[test]
fn a_full_node_takes_nothing() {
    let p = pending("a", 0, 1);
    let mut n = node("n1");
    n.slots_used = 4;
    assert_eq!(texts(&p, &n), ["no free slot: 4 of 4 used"]);
    n.slots_max = 0;
    n.slots_used = 0;
    assert_eq!(rejections(&p, &n)[0].filter(), Filter::Slots);
}

#[test]
fn a_pinned_experiment_goes_only_to_its_node() {
    let mut p = pending("a", 0, 1);
    p.req.node = Some(name("n2"));
    assert_eq!(texts(&p, &node("n1")), ["the experiment is pinned to n2"]);
    assert_eq!(rejections(&p, &node("n2")), []);
}

#[test]
fn labels_must_all_match() {
    let mut p = pending("a", 0, 1);
    p.req.labels = [label("model", "orin-nx"), label("room", "b12")]
        .into_iter()
        .collect();
    assert_eq!(
        texts(&p, &node("n1")),
        ["labels do not match: model=orin-nx (node has model=agx-orin), room=b12 (node has no room)"]
    );
    let mut n = node("n1");
    n.labels.extend([
        label("model", "orin-nx"),
        label("room", "b12"),
        label("x", "y"),
    ]);
    assert_eq!(rejections(&p, &n), [], "extra node labels do not matter");
}

#[test]
fn a_gpu_experiment_needs_a_gpu() {
    let mut p = pending("a", 0, 1);
    p.req.gpu = true;
    let mut n = node("n1");
    n.gpu = false;
    assert_eq!(texts(&p, &n), ["no GPU"]);
    p.req.gpu = false;
    assert_eq!(rejections(&p, &n), [], "a GPU node also takes CPU work");
}

#[test]
fn the_current_power_mode_fits_by_name_or_id() {
    let mut p = pending("a", 0, 1);
    for wanted in ["MAXN", "0"] {
        p.req.power_mode = Some(PowerMode::new(wanted).unwrap());
        let d = plan(std::slice::from_ref(&p), &[node("n1")], &Policy::default());
        assert_eq!(
            d[0].outcome,
            Outcome::Placed {
                node: name("n1"),
                switch_to: None
            }
        );
    }
}

#[test]
fn a_node_switches_power_mode_when_nothing_there_needs_another() {
    let mut p = pending("a", 0, 1);
    p.req.power_mode = Some(PowerMode::new("MODE_15W").unwrap());
    let d = plan(std::slice::from_ref(&p), &[node("n1")], &Policy::default());
    assert_eq!(
        d[0].outcome,
        Outcome::Placed {
            node: name("n1"),
            switch_to: Some(mode(1, "MODE_15W", false))
        }
    );
    assert!(d[0]
        .summary()
        .ends_with("after switching it to power mode MODE_15W"));

    let mut busy = node("n1");
    busy.modes_in_use.insert(0);
    assert_eq!(
        texts(&p, &busy),
        ["switching to power mode MODE_15W would disturb experiments running in MAXN"]
    );
}

#[test]
fn a_power_mode_switch_that_needs_a_reboot_is_refused() {
    let mut p = pending("a", 0, 1);
    p.req.power_mode = Some(PowerMode::new("MODE_30W").unwrap());
    assert_eq!(
        texts(&p, &node("n1")),
        ["switching to power mode MODE_30W needs a reboot"]
    );
    let mut there = node("n1");
    there.power_mode = Some(2);
    assert_eq!(rejections(&p, &there), [], "already in it: no switch");
}

#[test]
fn a_power_mode_the_node_lacks_is_refused() {
    let mut p = pending("a", 0, 1);
    p.req.power_mode = Some(PowerMode::new("7").unwrap());
    assert_eq!(
        texts(&p, &node("n1")),
        ["power mode 7 does not exist here (modes: 0 MAXN, 1 MODE_15W, 2 MODE_30W)"]
    );
    let mut bare = node("n1");
    bare.power_modes.clear();
    bare.power_mode = None;
    assert_eq!(
        texts(&p, &bare),
        ["power mode 7 asked for, but the node has no nvpmodel"]
    );
}

#[test]
fn every_failed_filter_is_reported() {
    let mut p = pending("a", 0, 1);
    p.req.gpu = true;
    p.req.memory_max = Some(64 * GIB);
    let mut n = node("n1");
    n.cordoned = true;
    n.hottest_c = Some(80.0);
    n.gpu = false;
    let filters: Vec<Filter> = rejections(&p, &n).iter().map(Rejection::filter).collect();
    assert_eq!(
        filters,
        [
            Filter::Cordoned,
            Filter::Temperature,
            Filter::Memory,
            Filter::Gpu
        ]
    );
}

// Policies.

/// n-cool is the coolest, n-idle the least loaded, n-empty runs nothing,
/// n-full has the least room left.
fn contrasting_nodes() -> Vec<NodeView> {
    let mut cool = node("n-cool");
    cool.hottest_c = Some(35.0);
    cool.cpu_percent = 60.0;
    cool.slots_used = 2;
    cool.memory_reserved = 16 * GIB;

    let mut idle = node("n-idle");
    idle.hottest_c = Some(55.0);
    idle.cpu_percent = 2.0;
    idle.slots_used = 1;
    idle.memory_reserved = 4 * GIB;

    let mut empty = node("n-empty");
    empty.hottest_c = Some(60.0);
    empty.cpu_percent = 30.0;
    empty.slots_used = 0;
    empty.memory_reserved = 0;

    let mut full = node("n-full");
    full.hottest_c = Some(50.0);
    full.cpu_percent = 70.0;
    full.slots_used = 3;
    full.memory_reserved = 28 * GIB;
    vec![cool, idle, empty, full]
}

fn choice(policy_name: PolicyName, nodes: &[NodeView]) -> String {
    let mut p = pending("a", 0, 1);
    p.req.memory_max = Some(2 * GIB);
    let d = plan(&[p], nodes, &policy(policy_name));
    placed_on(&d[0]).unwrap().to_owned()
}

#[test]
fn coolest_takes_the_coolest_node() {
    assert_eq!(choice(PolicyName::Coolest, &contrasting_nodes()), "n-cool");
}

#[test]
fn least_loaded_takes_the_idlest_node() {
    assert_eq!(
        choice(PolicyName::LeastLoaded, &contrasting_nodes()),
        "n-idle"
    );
}

#[test]
fn spread_takes_the_node_with_the_fewest_experiments() {
    assert_eq!(choice(PolicyName::Spread, &contrasting_nodes()), "n-empty");
}

#[test]
fn pack_takes_the_fullest_node_that_fits() {
    assert_eq!(choice(PolicyName::Pack, &contrasting_nodes()), "n-full");
    // Once the fullest cannot fit it, the next fullest.
    let mut nodes = contrasting_nodes();
    nodes[3].memory_reserved = 31 * GIB;
    assert_eq!(choice(PolicyName::Pack, &nodes), "n-cool");
}

#[test]
fn balanced_weighs_temperature_and_load() {
    // n-cool is coolest but busy; n-idle is warm but idle; with the default
    // weights temperature counts more than load.
    let mut cool = node("n-cool");
    cool.hottest_c = Some(35.0);
    cool.cpu_percent = 50.0;
    let mut idle = node("n-idle");
    idle.hottest_c = Some(60.0);
    idle.cpu_percent = 5.0;
    assert_eq!(
        choice(PolicyName::Balanced, &[cool.clone(), idle.clone()]),
        "n-cool"
    );
    // A nearly saturated CPU outweighs a few degrees.
    cool.hottest_c = Some(50.0);
    cool.cpu_percent = 100.0;
    idle.hottest_c = Some(55.0);
    assert_eq!(choice(PolicyName::Balanced, &[cool, idle]), "n-idle");
}

#[test]
fn weights_from_the_config_change_the_choice() {
    let mut p = policy(PolicyName::Balanced);
    p.weights.balanced = Weights {
        load: 1.0,
        ..Weights::ZERO
    };
    let mut pend = pending("a", 0, 1);
    pend.req.memory_max = Some(2 * GIB);
    let d = plan(&[pend], &contrasting_nodes(), &p);
    assert_eq!(placed_on(&d[0]), Some("n-idle"));
}

#[test]
fn scores_are_weighted_means_of_terms_in_unit_range() {
    let d = plan(
        &[pending("a", 0, 1)],
        &contrasting_nodes(),
        &policy(PolicyName::Balanced),
    );
    for v in &d[0].verdicts {
        let s = v.score.unwrap();
        assert!(s.terms.iter().all(|t| (0.0..=1.0).contains(t)), "{s:?}");
        let mean = s
            .terms
            .iter()
            .zip(&s.weights)
            .map(|(t, w)| t * w)
            .sum::<f64>()
            / s.weights.iter().sum::<f64>();
        assert!((s.total - mean).abs() < 1e-12);
    }
    // The cool node's temperature term: (70 − 35) / 70.
    let cool = d[0]
        .verdicts
        .iter()
        .find(|v| v.node.as_str() == "n-cool")
        .unwrap();
    assert!((cool.score.unwrap().terms[0] - 0.5).abs() < 1e-12);
}

#[test]
fn verdicts_list_fitting_nodes_by_score_then_the_rest_by_name() {
    let mut nodes = contrasting_nodes();
    let mut hot = node("a-hot");
    hot.hottest_c = Some(90.0);
    let mut cordoned = node("z-cordoned");
    cordoned.cordoned = true;
    nodes.push(hot);
    nodes.push(cordoned);
    let d = plan(&[pending("a", 0, 1)], &nodes, &policy(PolicyName::Coolest));
    let order: Vec<&str> = d[0].verdicts.iter().map(|v| v.node.as_str()).collect();
    assert_eq!(
        order,
        [
            "n-cool",
            "n-full",
            "n-idle",
            "n-empty",
            "a-hot",
            "z-cordoned"
        ]
    );
}

// Order.

#[test]
fn equal_scores_go_to_the_node_whose_name_sorts_first() {
    let nodes = [node("n3"), node("n1"), node("n2")];
    for name in PolicyName::ALL {
        let d = plan(&[pending("a", 0, 1)], &nodes, &policy(name));
        assert_eq!(placed_on(&d[0]), Some("n1"), "{name}");
    }
}

#[test]
fn higher_priority_goes_first_then_older() {
    let queue = [
        pending("low-old", 1, 1),
        pending("high-new", 9, 4),
        pending("mid", 5, 2),
        pending("high-old", 9, 3),
    ];
    let d = plan(&queue, &[node("n1")], &Policy::default());
    let order: Vec<&str> = d.iter().map(|d| d.experiment.as_str()).collect();
    assert_eq!(order, ["high-old", "high-new", "mid", "low-old"]);
}

#[test]
fn a_blocked_head_does_not_hold_smaller_experiments() {
    let mut big = pending("big", 9, 1);
    big.req.memory_max = Some(64 * GIB);
    let mut small = pending("small", 1, 2);
    small.req.memory_max = Some(GIB);
    let d = plan(&[big, small], &[node("n1")], &Policy::default());
    assert_eq!(d[0].experiment.as_str(), "big");
    assert_eq!(d[0].outcome, Outcome::Unschedulable);
    assert_eq!(d[0].summary(), "no node fits: 1 short of memory");
    assert_eq!(placed_on(&d[1]), Some("n1"));
}

#[test]
fn strict_order_holds_everything_behind_a_blocked_head() {
    let mut big = pending("big", 9, 1);
    big.req.memory_max = Some(64 * GIB);
    let small = pending("small", 1, 2);
    let strict = Policy {
        strict_order: true,
        ..Policy::default()
    };
    let d = plan(&[big, small], &[node("n1")], &strict);
    assert_eq!(d[0].outcome, Outcome::Unschedulable);
    assert_eq!(d[1].outcome, Outcome::Blocked { behind: id("big") });
    // The held experiment is still evaluated, so Explain can show it fits.
    assert!(d[1].verdicts[0].fits());
    assert_eq!(
        d[1].summary(),
        "waiting behind big, which cannot be placed yet (strict order)"
    );
}

#[test]
fn a_pass_fills_the_best_node_then_moves_on() {
    // n1 is cooler, so coolest prefers it until its two slots are used.
    let mut n1 = node("n1");
    n1.slots_max = 2;
    n1.hottest_c = Some(35.0);
    let mut n2 = node("n2");
    n2.hottest_c = Some(50.0);
    let queue: Vec<Pending> = (1..=4).map(|i| pending(&format!("e{i}"), 0, i)).collect();
    let d = plan(&queue, &[n1, n2], &policy(PolicyName::Coolest));
    let placed: Vec<&str> = d.iter().map(|d| placed_on(d).unwrap()).collect();
    assert_eq!(placed, ["n1", "n1", "n2", "n2"]);
    assert_eq!(
        d[2].verdicts.last().unwrap().rejections,
        [Rejection::Slots { used: 2, max: 2 }]
    );
}

#[test]
fn a_pass_uses_up_memory() {
    let mut p1 = pending("e1", 0, 1);
    p1.req.memory_max = Some(20 * GIB);
    let mut p2 = pending("e2", 0, 2);
    p2.req.memory_max = Some(20 * GIB);
    let d = plan(&[p1, p2], &[node("n1")], &Policy::default());
    assert_eq!(placed_on(&d[0]), Some("n1"));
    assert_eq!(d[1].outcome, Outcome::Unschedulable);
    assert_eq!(
        d[1].verdicts[0].to_string_list(),
        ["not enough memory: needs 20.0 GiB, 12.0 GiB of 32.0 GiB unreserved"]
    );
}

#[test]
fn spread_deals_out_a_pass_across_equal_nodes() {
    let queue: Vec<Pending> = (1..=4).map(|i| pending(&format!("e{i}"), 0, i)).collect();
    let d = plan(
        &queue,
        &[node("b"), node("c"), node("a")],
        &policy(PolicyName::Spread),
    );
    let placed: Vec<&str> = d.iter().map(|d| placed_on(d).unwrap()).collect();
    assert_eq!(placed, ["a", "b", "c", "a"]);
}

#[test]
fn least_loaded_counts_the_cpu_a_pass_adds() {
    // Each experiment is assumed to add a core (12.5 % of 8) unless it has
    // a quota; n1 starts a little less loaded than n2.
    let mut n1 = node("n1");
    n1.cpu_percent = 10.0;
    let mut n2 = node("n2");
    n2.cpu_percent = 15.0;
    let mut light = pending("light", 0, 2);
    light.req.cpu_quota_percent = Some(20);
    let d = plan(
        &[pending("heavy", 0, 1), light, pending("third", 0, 3)],
        &[n1, n2],
        &policy(PolicyName::LeastLoaded),
    );
    let placed: Vec<&str> = d.iter().map(|d| placed_on(d).unwrap()).collect();
    // heavy: n1 → 22.5 %; light: n2 (15 %) → 17.5 %; third: n2 again.
    assert_eq!(placed, ["n1", "n2", "n2"]);
}

#[test]
fn a_pass_remembers_power_mode_switches() {
    let mut slow = pending("slow", 0, 1);
    slow.req.power_mode = Some(PowerMode::new("MODE_15W").unwrap());
    let mut fast = pending("fast", 0, 2);
    fast.req.power_mode = Some(PowerMode::new("MAXN").unwrap());
    let d = plan(&[slow, fast], &[node("n1")], &Policy::default());
    assert!(matches!(&d[0].outcome, Outcome::Placed { switch_to: Some(m), .. } if m.id == 1));
    assert_eq!(d[1].outcome, Outcome::Unschedulable);
    assert_eq!(
        d[1].verdicts[0].to_string_list(),
        ["switching to power mode MAXN would disturb experiments running in MODE_15W"]
    );
}

#[test]
fn an_unschedulable_summary_counts_nodes_per_filter() {
    let mut hot1 = node("n1");
    hot1.hottest_c = Some(73.0);
    let mut hot2 = node("n2");
    hot2.hottest_c = Some(80.0);
    hot2.thermal = Thermal::Warn;
    let mut cordoned = node("n3");
    cordoned.cordoned = true;
    let d = plan(
        &[pending("a", 0, 1)],
        &[hot1, hot2, cordoned],
        &Policy::default(),
    );
    assert_eq!(
        d[0].summary(),
        "no node fits: 1 cordoned, 1 held by the thermal guard, 2 too hot"
    );
    let none = plan(&[pending("a", 0, 1)], &[], &Policy::default());
    assert_eq!(none[0].summary(), "no node fits: the fleet has no nodes");
}

#[test]
fn the_same_inputs_give_the_same_decisions() {
    let queue: Vec<Pending> = (1..=20)
        .map(|i| {
            let mut p = pending(&format!("e{i:02}"), i % 3, i.into());
            p.req.memory_max = Some(u64::from(i % 5 + 1) * GIB);
            p
        })
        .collect();
    let mut nodes = contrasting_nodes();
    nodes.extend((1..=5).map(|i| node(&format!("x{i}"))));
    let policy = Policy::default();
    let first = plan(&queue, &nodes, &policy);
    let mut shuffled_queue = queue.clone();
    shuffled_queue.reverse();
    let mut shuffled_nodes = nodes.clone();
    shuffled_nodes.rotate_left(3);
    assert_eq!(plan(&shuffled_queue, &shuffled_nodes, &policy), first);
}

#[test]
fn decisions_survive_json() {
    let mut p = pending("a", 0, 1);
    p.req.power_mode = Some(PowerMode::new("MODE_15W").unwrap());
    let mut hot = node("n2");
    hot.hottest_c = Some(90.0);
    let d = plan(&[p], &[node("n1"), hot], &Policy::default());
    let json = serde_json::to_string(&d).unwrap();
    let back: Vec<Decision> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, d);
}

// Configuration.

#[test]
fn an_empty_scheduler_table_is_the_default_policy() {
    let p: Policy = toml::from_str("").unwrap();
    assert_eq!(p, Policy::default());
    assert_eq!(p.policy, DEFAULT_POLICY);
    assert_eq!(p.weights(), DEFAULT_BALANCED_WEIGHTS);
    p.check().unwrap();
}

#[test]
fn the_config_names_a_policy_and_replaces_its_weights() {
    let p: Policy = toml::from_str(
        r#"
        policy = "least-loaded"
        strict_order = true
        temp_margin_c = 3.5
        [weights.least-loaded]
        load = 2.0
        temperature = 1.0
        "#,
    )
    .unwrap();
    assert_eq!(p.policy, PolicyName::LeastLoaded);
    assert!(p.strict_order);
    assert_eq!(p.temp_margin_c, 3.5);
    // Terms left out weigh 0; other policies keep their defaults.
    assert_eq!(
        p.weights(),
        Weights {
            temperature: 1.0,
            load: 2.0,
            ..Weights::ZERO
        }
    );
    assert_eq!(p.weights.of(PolicyName::Pack), DEFAULT_PACK_WEIGHTS);
    p.check().unwrap();
}

#[test]
fn unknown_keys_and_names_are_refused() {
    for bad in [
        "polcy = \"pack\"",
        "policy = \"hottest\"",
        "[weights.balanced]\ntemprature = 1.0",
        "[weights.greedy]\nload = 1.0",
    ] {
        assert!(toml::from_str::<Policy>(bad).is_err(), "{bad}");
    }
    assert_eq!(
        PolicyName::parse("hottest").unwrap_err().to_string(),
        "scheduling policy \"hottest\" is unknown: use balanced, coolest, least-loaded, spread or pack"
    );
    for name in PolicyName::ALL {
        assert_eq!(PolicyName::parse(name.as_str()), Ok(name));
    }
}

#[test]
fn policies_with_bad_numbers_fail_their_check() {
    let mut p = Policy::default();
    p.weights.spread.spread = -1.0;
    assert_eq!(
        p.check().unwrap_err().to_string(),
        "weight spread = -1 of policy spread is invalid: use a number ≥ 0"
    );
    let mut p = Policy::default();
    p.weights.pack = Weights::ZERO;
    assert_eq!(
        p.check().unwrap_err(),
        PolicyError::NoWeight {
            policy: PolicyName::Pack
        }
    );
    let mut p = Policy::default();
    p.weights.coolest.load = f64::NAN;
    assert!(p.check().is_err());
    for margin in [-1.0, 51.0, f64::INFINITY] {
        let p = Policy {
            temp_margin_c: margin,
            ..Policy::default()
        };
        assert!(
            matches!(p.check(), Err(PolicyError::BadMargin(_))),
            "{margin}"
        );
    }
}

#[test]
fn requirements_come_from_the_spec_and_survive_json() {
    let wire = fleet_proto::v1::ExperimentSpec {
        id: "amnesiac-001".into(),
        command: vec!["python3".into(), "run.py".into()],
        priority: 50,
        resources: Some(fleet_proto::v1::Resources {
            memory_max: "8G".into(),
            cpu_quota: "80%".into(),
            gpu: true,
        }),
        placement: Some(fleet_proto::v1::Placement {
            node: "jetson-03".into(),
            labels: [("model".to_owned(), "agx-orin".to_owned())].into(),
            power_mode: "MAXN".into(),
            max_temp_c: Some(70.0),
        }),
        ..Default::default()
    };
    let spec = ExperimentSpec::try_from(&wire).unwrap();
    let req = Requirements::of(&spec);
    assert_eq!(
        req,
        Requirements {
            priority: 50,
            memory_max: Some(8 * GIB),
            cpu_quota_percent: Some(80),
            gpu: true,
            node: Some(name("jetson-03")),
            labels: [label("model", "agx-orin")].into_iter().collect(),
            power_mode: Some(PowerMode::new("MAXN").unwrap()),
            max_temp_c: Some(70.0),
        }
    );
    let json = serde_json::to_string(&req).unwrap();
    assert!(json.contains(r#""power_mode":"MAXN""#), "{json}");
    assert_eq!(serde_json::from_str::<Requirements>(&json).unwrap(), req);
    let bad = json.replace("MAXN", "MAX N");
    assert!(serde_json::from_str::<Requirements>(&bad).is_err());
}

impl NodeVerdict {
    fn to_string_list(&self) -> Vec<String> {
        self.rejections.iter().map(ToString::to_string).collect()
    }
}

// Detail.

/// A fleet where every filter but one has something to say: 8 idle nodes
/// with temperatures spread so scores differ, 4 too hot, 4 cordoned, 2
/// both.
fn mixed_fleet() -> Vec<NodeView> {
    let mut nodes = Vec::new();
    for i in 0..8 {
        let mut n = node(&format!("fit-{i}"));
        n.hottest_c = Some(30.0 + f64::from(i));
        nodes.push(n);
    }
    for i in 0..4 {
        let mut n = node(&format!("hot-{i}"));
        n.hottest_c = Some(72.0);
        nodes.push(n);
    }
    for i in 0..4 {
        let mut n = node(&format!("off-{i}"));
        n.cordoned = true;
        nodes.push(n);
    }
    for i in 0..2 {
        let mut n = node(&format!("both-{i}"));
        n.cordoned = true;
        n.hottest_c = Some(80.0);
        nodes.push(n);
    }
    nodes
}

fn queue(n: u64) -> Vec<Pending> {
    (1..=n).map(|i| pending(&format!("e{i}"), 0, i)).collect()
}

#[test]
fn compact_and_full_decisions_place_alike_and_count_alike() {
    let nodes = mixed_fleet();
    for name in PolicyName::ALL {
        let p = policy(name);
        let full = plan_with(&queue(40), &nodes, &p, Detail::Full);
        let compact = plan_with(&queue(40), &nodes, &p, Detail::Compact);
        assert_eq!(full.len(), compact.len());
        for (f, c) in full.iter().zip(&compact) {
            assert_eq!(f.outcome, c.outcome, "{name}");
            assert_eq!(f.tally, c.tally, "{name}");
            // The counts agree with the full list of verdicts.
            assert_eq!(Tally::of(&f.verdicts), f.tally, "{name}");
            assert_eq!(f.summary(), c.summary(), "{name}");
            assert!(f.lists_every_node());
        }
    }
}

#[test]
fn a_compact_decision_shows_the_best_that_fit_and_a_few_per_reason() {
    let nodes = mixed_fleet();
    let p = policy(PolicyName::Coolest);
    let full = &plan_with(&queue(1), &nodes, &p, Detail::Full)[0];
    let compact = &plan_with(&queue(1), &nodes, &p, Detail::Compact)[0];
    let names =
        |d: &Decision| -> Vec<String> { d.verdicts.iter().map(|v| v.node.to_string()).collect() };
    assert_eq!(
        names(compact),
        [
            // The five coolest, best first.
            "fit-0", "fit-1", "fit-2", "fit-3", "fit-4",
            // Then by name: the first three too hot (both-* are also
            // cordoned, and count for both), the first three cordoned.
            "both-0", "both-1", "hot-0", "off-0",
        ]
    );
    // Each one shown is shown whole, as the full decision shows it.
    for v in &compact.verdicts {
        let same = full.verdicts.iter().find(|f| f.node == v.node).unwrap();
        assert_eq!(v, same);
    }
    assert_eq!(compact.tally.nodes, 18);
    assert_eq!(compact.tally.fit, 8);
    assert_eq!(compact.tally.rejected[&Filter::Temperature], 6);
    assert_eq!(compact.tally.rejected[&Filter::Cordoned], 6);
    assert!(!compact.lists_every_node());
    assert_eq!(full.verdicts.len(), 18);
}

#[test]
fn a_small_fleet_is_shown_whole_even_compactly() {
    // Three boards, as in a lab's first day: every one is shown.
    let mut hot = node("a-hot");
    hot.hottest_c = Some(72.0);
    let mut busy = node("b-busy");
    busy.slots_used = 4;
    let nodes = [hot, busy, node("c-free")];
    let d = &plan_with(&queue(1), &nodes, &Policy::default(), Detail::Compact)[0];
    assert_eq!(placed_on(d), Some("c-free"));
    assert!(d.lists_every_node());
    assert_eq!(d, &plan(&queue(1), &nodes, &Policy::default())[0]);
}

#[test]
fn ties_among_the_best_go_by_name_in_a_compact_decision_too() {
    let nodes: Vec<NodeView> = (0..9).rev().map(|i| node(&format!("n{i}"))).collect();
    let d = &plan_with(&queue(1), &nodes, &Policy::default(), Detail::Compact)[0];
    let shown: Vec<&str> = d.verdicts.iter().map(|v| v.node.as_str()).collect();
    assert_eq!(shown, ["n0", "n1", "n2", "n3", "n4"]);
}

#[test]
fn plan_for_gives_the_full_decision_the_pass_makes() {
    let nodes = mixed_fleet();
    let p = policy(PolicyName::Balanced);
    let q = queue(12);
    let full = plan(&q, &nodes, &p);
    for want in &full {
        let one = plan_for(&q, &nodes, &p, &want.experiment).unwrap();
        assert_eq!(&one, want);
    }
    assert_eq!(plan_for(&q, &nodes, &p, &id("nobody")), None);
}

#[test]
fn a_decision_stored_without_counts_is_counted_from_its_verdicts() {
    let mut hot = node("hot");
    hot.hottest_c = Some(72.0);
    let mut d = plan(&queue(1), &[hot], &Policy::default()).remove(0);
    let summary = d.summary();
    d.tally = Tally::default();
    assert_eq!(d.summary(), summary);
    assert_eq!(summary, "no node fits: 1 too hot");
    assert!(d.lists_every_node());
}

#[test]
fn a_fleet_without_nodes_says_so() {
    let d = &plan_with(&queue(1), &[], &Policy::default(), Detail::Compact)[0];
    assert_eq!(d.summary(), "no node fits: the fleet has no nodes");
}

#[test]
fn each_decision_of_a_pass_is_the_one_made_alone_on_the_fleet_as_the_pass_left_it() {
    // Requirements that change along the queue, so kept verdicts are
    // reused for some experiments and checked afresh for others.
    let nodes = mixed_fleet();
    let mut q = Vec::new();
    for i in 1..=30u64 {
        let mut p = pending(&format!("e{i:02}"), 0, i);
        p.req.memory_max = Some((i % 3 + 1) * 5 * GIB);
        p.req.cpu_quota_percent = Some(u32::try_from(i % 2 * 150 + 50).unwrap());
        if i % 7 == 0 {
            p.req.node = Some(name("fit-3"));
        }
        if i % 5 == 0 {
            p.req.power_mode = Some(PowerMode::new("MODE_15W").unwrap());
        }
        q.push(p);
    }
    for name in PolicyName::ALL {
        let p = policy(name);
        let pass = plan(&q, &nodes, &p);
        let mut fleet = nodes.clone();
        fleet.sort_by(|a, b| a.name.cmp(&b.name));
        for (d, pend) in pass.iter().zip(&q) {
            let alone = plan(std::slice::from_ref(pend), &fleet, &p).remove(0);
            assert_eq!(d, &alone, "{name} {}", pend.id);
            if let Outcome::Placed { node, switch_to } = &d.outcome {
                let n = fleet.iter_mut().find(|n| &n.name == node).unwrap();
                let mut u = Usage::of(n);
                consume(&mut u, n, &pend.req, switch_to.as_ref());
                n.memory_reserved = u.memory_reserved;
                n.slots_used = u.slots_used;
                n.cpu_percent = u.cpu_percent;
                n.power_mode = u.power_mode;
                n.modes_in_use = u.modes_in_use;
            }
        }
        assert!(pass.iter().any(|d| d.node().is_some()));
        assert!(pass.iter().any(|d| d.node().is_none()));
    }
}

#[test]
fn a_decision_stored_before_counts_existed_still_reads() {
    let mut hot = node("hot");
    hot.hottest_c = Some(72.0);
    let d = plan(&queue(1), &[hot, node("cool")], &Policy::default()).remove(0);
    let mut json = serde_json::to_value(&d).unwrap();
    json.as_object_mut().unwrap().remove("tally").unwrap();
    let old: Decision = serde_json::from_value(json).unwrap();
    assert_eq!(old.tally, Tally::default());
    assert_eq!(old.tally(), d.tally);
    assert_eq!(old.summary(), d.summary());
    assert!(old.lists_every_node());
}
