"""Index dims split from one offset and laid out contiguously are read as one piece of it."""

from fusec.kernels.contiguous import Piece, merge_contiguous, piece_source


def _pieces(linear="offs", sizes=(4, 28, 28)):
    """The pieces unravelling `linear` over `sizes` gives, named x0 (innermost) up."""
    pieces, divisor = {}, 1
    for i, size in enumerate(reversed(sizes)):
        pieces[f"x{i}"] = Piece(linear, divisor, size, outermost=i == len(sizes) - 1)
        divisor *= size
    return pieces


def _merge(dims, shape, strides, pieces):
    bound = []

    def let(expr):
        bound.append(expr)
        return expr if expr.isidentifier() else f"m{len(bound)}"
    return (*merge_contiguous(dims, shape, strides, pieces, let), bound)


def test_a_contiguous_tensor_is_read_at_the_offset_itself():
    dims, shape, strides, bound = _merge(["x2", "x1", "x0"], (4, 28, 28), (784, 28, 1), _pieces())
    assert (dims, shape, strides) == (["offs"], [3136], [1])
    assert bound == ["offs % 784", "offs"]


def test_a_plane_inside_a_gathered_channel_merges_rows_and_columns_only():
    pieces = _pieces()
    dims, _, strides, bound = _merge(["c", "x1", "x0"], (4, 28, 28), (784, 28, 1), pieces)
    assert (dims, strides, bound) == (["c", "m1"], [784, 1], ["offs % 784"])
    assert pieces["m1"] == Piece("offs", 1, 784, outermost=False)


def test_transposed_padded_or_foreign_dims_stay_apart():
    pieces = _pieces()
    assert _merge(["x1", "x0"], (28, 28), (1, 28), pieces)[0] == ["x1", "x0"]  # transposed
    assert _merge(["x1", "x0"], (28, 28), (32, 1), pieces)[0] == ["x1", "x0"]  # rows padded to 32
    pieces["y0"] = Piece("roffs", 1, 28, outermost=False)
    assert _merge(["x1", "y0"], (28, 28), (28, 1), pieces)[0] == ["x1", "y0"]  # another offset
    assert _merge(["x0", "x1"], (28, 28), (28, 1), pieces)[0] == ["x0", "x1"]  # swapped order


def test_size_one_dims_between_do_not_separate_a_run():
    dims, shape, strides, _ = _merge(["x1", "z", "x0"], (28, 1, 28), (28, 28, 1), _pieces())
    assert (dims, shape, strides) == (["m1"], [784], [1])


def test_piece_source():
    assert piece_source(Piece("offs", 28, 28, outermost=False)) == "offs // 28 % 28"
    assert piece_source(Piece("offs", 784, 4, outermost=True)) == "offs // 784"
    assert piece_source(Piece("offs", 1, 784, outermost=False)) == "offs % 784"
