"""The course runner executes a notebook into its output folder, without kernel warnings."""

import nbformat

from sat_helpers.course import run_notebook


def test_run_notebook_executes_it_without_kernel_warnings(tmp_path, capfd):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print(6 * 7)"),
        nbformat.v4.new_code_cell("import sys\nprint('50% done', file=sys.stderr)"),
        nbformat.v4.new_code_cell("import warnings\nwarnings.warn('the tensor is stale')")])
    nbformat.write(nb, tmp_path / "in" / "01_x.ipynb")
    status, minutes, error, warned = run_notebook(tmp_path / "in" / "01_x.ipynb",
                                                  tmp_path / "out")
    assert (status, error) == ("ok", "") and minutes > 0
    assert len(warned) == 1 and "UserWarning: the tensor is stale" in warned[0]
    executed = nbformat.read(tmp_path / "out" / "01_x.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "42\n"
    printed = capfd.readouterr()
    assert "without encryption" not in printed.err + printed.out, printed.err
