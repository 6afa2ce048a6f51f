from hpc_ppo.balance import assign_groups


def test_equal_group_counts_and_even_load():
    costs = [100, 90, 10, 10, 50, 40, 30, 30]
    owned = assign_groups(costs, world=2)
    assert sorted(g for o in owned for g in o) == list(range(8))
    assert [len(o) for o in owned] == [4, 4]
    loads = [sum(costs[g] for g in o) for o in owned]
    assert abs(loads[0] - loads[1]) <= 20  # contiguous split would give 250 vs 110


def test_deterministic_tie_break():
    assert assign_groups([5, 5, 5, 5], world=2) == [[0, 2], [1, 3]]
