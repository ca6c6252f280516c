"""Scan orders and directions: bijections, locality, known prefixes, views, caching, errors."""
import pytest
import torch

from mambaad_lib.scan import (
    DIRECTION_NAMES,
    RELEASE_DIRECTION_INDEX,
    SCAN_METHODS,
    inverse_orders,
    scan_directions,
    scan_order,
)

GRIDS = {
    "sweep": [(1, 1), (3, 5), (8, 8), (6, 4)],
    "scan": [(1, 1), (3, 5), (8, 8), (6, 4)],
    "zigzag": [(1, 1), (3, 5), (8, 8), (6, 4)],
    "zorder": [(1, 1), (2, 8), (8, 8), (16, 4)],
    "hilbert": [(1, 1), (2, 2), (8, 8), (32, 32)],
}


def _steps(order: torch.Tensor, width: int) -> torch.Tensor:
    rows, cols = order // width, order % width
    return (rows.diff().abs() + cols.diff().abs())


@pytest.mark.parametrize("name", SCAN_METHODS)
def test_every_order_is_a_bijection(name):
    for height, width in GRIDS[name]:
        order = scan_order(name, height, width)
        assert order.dtype == torch.long and order.shape == (height * width,)
        assert torch.equal(order.sort().values, torch.arange(height * width))


@pytest.mark.parametrize("name, size", [("hilbert", (16, 16)), ("hilbert", (64, 64)), ("scan", (7, 5)),
                                        ("scan", (8, 8))])
def test_hilbert_and_snake_move_to_a_4_neighbour(name, size):
    order = scan_order(name, *size)
    assert torch.all(_steps(order, size[1]) == 1)


def test_sweep_is_raster_and_zigzag_moves_diagonally_or_along_an_edge():
    assert torch.equal(scan_order("sweep", 3, 4), torch.arange(12))
    rows, cols = scan_order("zigzag", 5, 7).div(7, rounding_mode="floor"), scan_order("zigzag", 5, 7) % 7
    # Within an anti-diagonal a step is (+1, -1) or (-1, +1); between diagonals it moves one cell.
    diag = rows + cols
    same = diag.diff() == 0
    assert torch.all((rows.diff()[same].abs() == 1) & (cols.diff()[same].abs() == 1))
    assert torch.all(diag.diff()[~same] == 1)


def test_hilbert_matches_the_release_index_for_side_8():
    order = scan_order("hilbert", 8, 8)
    assert order[:16].tolist() == [0, 8, 9, 1, 2, 3, 11, 10, 18, 19, 27, 26, 25, 17, 16, 24]
    assert inverse_orders(order)[:16].tolist() == [0, 3, 4, 5, 58, 59, 60, 63, 1, 2, 7, 6, 57, 56, 61, 62]


def test_zigzag_matches_the_jpeg_table_and_zorder_interleaves_bits():
    # The JPEG zig-zag sequence of an 8x8 block begins like this (ITU T.81, figure 5).
    assert scan_order("zigzag", 8, 8)[:15].tolist() == [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4]
    # Morton order on 4x4: 2x2 blocks visited as (0,0) (0,1) (1,0) (1,1), recursively.
    assert scan_order("zorder", 4, 4).tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]


def test_snake_reverses_odd_rows():
    assert scan_order("scan", 3, 3).tolist() == [0, 1, 2, 5, 4, 3, 6, 7, 8]


def _distinct(directions: torch.Tensor) -> int:
    return len({tuple(row.tolist()) for row in directions})


@pytest.mark.parametrize("name, size", [("sweep", (8, 8)), ("sweep", (5, 7)), ("zorder", (8, 8)),
                                        ("zorder", (4, 8)), ("zigzag", (8, 8)), ("zigzag", (5, 7)),
                                        ("scan", (5, 7))])
def test_eight_directions_are_distinct(name, size):
    assert _distinct(scan_directions(name, *size)) == 8


def test_symmetric_curves_repeat_directions_exactly_where_geometry_says():
    # The transpose of rot90(k=1) is a left-right mirror, and a Hilbert curve running from
    # (0, 0) to (0, s-1) is its own mirror image reversed: wh_rot90 forward/reverse repeat
    # reverse/forward. The release defines its 8 directions the same way.
    hilbert = scan_directions("hilbert", 16, 16)
    assert torch.equal(hilbert[6], hilbert[1]) and torch.equal(hilbert[7], hilbert[0])
    assert _distinct(hilbert) == 6
    # A snake over an even number of columns: rot90 forward/reverse repeat wh reverse/forward.
    snake = scan_directions("scan", 8, 8)
    assert torch.equal(snake[4], snake[3]) and torch.equal(snake[5], snake[2])
    assert _distinct(snake) == 6


@pytest.mark.parametrize("name", SCAN_METHODS)
def test_eight_directions_are_the_paper_views(name):
    height, width = (8, 8) if name in ("hilbert",) else (4, 8) if name == "zorder" else (5, 7)
    directions = scan_directions(name, height, width)
    assert directions.shape == (8, height * width) and len(DIRECTION_NAMES) == 8
    grid = torch.randn(height, width)
    views = [grid, grid.t(), torch.rot90(grid, 1, (0, 1)), torch.rot90(grid, 1, (0, 1)).t()]
    for view_index, view in enumerate(views):
        expected = view.reshape(-1)[scan_order(name, *view.shape)]
        assert torch.equal(grid.reshape(-1)[directions[2 * view_index]], expected)
        assert torch.equal(grid.reshape(-1)[directions[2 * view_index + 1]], expected.flip(0))


@pytest.mark.parametrize("name", SCAN_METHODS)
def test_undoing_each_direction_restores_the_grid(name):
    side = 8
    x = torch.randn(2, 3, side * side)
    orders = scan_directions(name, side, side)
    inverse = inverse_orders(orders)
    for order, undo in zip(orders, inverse):
        assert torch.equal(x[..., order][..., undo], x)


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_direction_count_keeps_the_first_k(count):
    full = scan_directions("zigzag", 4, 4, 8)
    assert torch.equal(scan_directions("zigzag", 4, 4, count), full[:count])


def test_mapping_concatenates_each_methods_first_directions():
    mixed = scan_directions({"zigzag": 4, "hilbert": 4}, 8, 8, directions=8)
    assert torch.equal(mixed[:4], scan_directions("zigzag", 8, 8, 4))
    assert torch.equal(mixed[4:], scan_directions("hilbert", 8, 8, 4))
    spread = scan_directions({"scan": 2, "zorder": 2, "zigzag": 2, "hilbert": 2}, 8, 8)
    assert torch.equal(spread[6:], scan_directions("hilbert", 8, 8, 2))


def test_release_direction_index_is_a_permutation_pairing_views():
    assert sorted(RELEASE_DIRECTION_INDEX) == list(range(8))
    # Ours: view v forward at 2v, reversed at 2v+1; release: forward at v, reversed at v + 4.
    assert [RELEASE_DIRECTION_INDEX[2 * v] for v in range(4)] == [0, 1, 2, 3]
    assert [RELEASE_DIRECTION_INDEX[2 * v + 1] for v in range(4)] == [4, 5, 6, 7]


def test_callers_cannot_corrupt_the_cache():
    first = scan_order("hilbert", 8, 8)
    first.zero_()
    assert scan_order("hilbert", 8, 8)[:3].tolist() == [0, 8, 9]
    rows = scan_directions("sweep", 4, 4)
    rows.fill_(0)
    assert scan_directions("sweep", 4, 4)[0].tolist() == list(range(16))


def test_cache_is_immune_to_a_meta_default_device():
    with torch.device("meta"):
        order = scan_order("hilbert", 16, 16)
    assert order.device.type == "cpu"
    assert scan_order("hilbert", 16, 16).device.type == "cpu"


@pytest.mark.parametrize("call, message", [
    (lambda: scan_order("spiral", 8, 8), "scan must be one of"),
    (lambda: scan_order("hilbert", 8, 16), "square"),
    (lambda: scan_order("hilbert", 12, 12), "power-of-two"),
    (lambda: scan_order("zorder", 6, 8), "power-of-two"),
    (lambda: scan_order("sweep", 0, 8), "height must be a positive integer"),
    (lambda: scan_directions("sweep", 4, 4, directions=3), "directions must be one of"),
    (lambda: scan_directions({"zigzag": 3, "hilbert": 4}, 8, 8), "sum to one of"),
    (lambda: scan_directions({"zigzag": 2, "hilbert": 2}, 8, 8, directions=8), "pass directions=4"),
    (lambda: scan_directions({"zigzag": 2, "bogus": 2}, 8, 8, directions=4), "scan must be one of"),
    (lambda: scan_directions({"zigzag": 9}, 8, 8), "integers in 1..8"),
])
def test_bad_input_raises_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
