"""`%grad EXPR OPTIONS`: the options are found from the magic's own parser, in one place."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run
from IPython.core.magic_arguments import argument, magic_arguments

from tapemagic.jupyter.magics import TapeMagics, option_start, split_options

GRAD = TapeMagics.grad.parser


def recognised(parser) -> set[str]:
    """The option strings that `option_start(parser)` splits a line on."""
    start = option_start(parser)
    return {o for o in parser._option_string_actions if split_options(f"x {o}", start)[1]}


def test_every_option_of_the_parser_starts_the_options():
    assert recognised(GRAD) == set(GRAD._option_string_actions)
    assert {"--wrt", "--at", "-o", "--order", "--check", "--plot", "-q"} <= recognised(GRAD)


def test_an_option_added_to_a_magic_is_recognised_without_another_list():
    @magic_arguments()
    @argument("--new-option", metavar="N")
    @argument("-z", action="store_true")
    def magic(line):
        """A magic with options %grad does not have."""

    start = option_start(magic.parser)
    assert split_options("x - 2 --new-option 3 -z", start) == ("x - 2", "--new-option 3 -z")
    assert split_options("x - 2 -z", start) == ("x - 2", "-z")
    assert split_options("x - 2 --at x=1", start) == ("x - 2 --at x=1", "")  # not its option


@pytest.mark.parametrize(
    "line, expr, opts",
    [
        ("x**2 --at x=4", "x**2", "--at x=4"),
        ("x**2 --at=x=4", "x**2", "--at=x=4"),
        ("tf.sin(x) * y --at x=0.5,y=2 --check", "tf.sin(x) * y", "--at x=0.5,y=2 --check"),
        ("x - 2 --at x=1", "x - 2", "--at x=1"),
        ("x -2 --at x=1 -q", "x -2", "--at x=1 -q"),
        ("x-o --at o=1", "x-o", "--at o=1"),  # an option only as a word of its own
        ("x - q -q", "x - q", "-q"),
        ("x --atom", "x --atom", ""),  # not --at
        ("tf.exp(x)", "tf.exp(x)", ""),
    ],
)
def test_split(line, expr, opts):
    assert split_options(line, option_start(GRAD)) == (expr, opts)


def test_existing_forms_still_work(ip):
    run(ip, "g = %grad x**2 --at x=4")
    assert float(ip.user_ns["g"]) == 8.0
    run(ip, "h = %grad tf.sin(x) * y --at x=0.5,y=2 --check -q")
    gx, gy = ip.user_ns["h"]
    np.testing.assert_allclose([float(gx), float(gy)], [2 * np.cos(0.5), np.sin(0.5)], 1e-6)
    assert all(d.check.ok for d in ip.user_ns["_tape"].derivatives)
    run(ip, "k = %grad x - 2 --at x=1 -q")
    assert float(ip.user_ns["k"]) == 1.0
    run(ip, "m = %grad x**3 --at x=2 --order 2 -q")
    assert float(ip.user_ns["m"]) == 12.0
