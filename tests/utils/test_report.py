from aukit.utils.report import benchmark_section, write_section


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "benchmarks.md"
    write_section(path, "## A", "## A\n\nfirst\n")
    write_section(path, "## B", "## B\n\nother\n")
    write_section(path, "## A", "## A\n\nsecond\n")
    text = path.read_text()
    assert text.count("## A") == 1 and "second" in text and "first" not in text
    assert "## B\n\nother" in text and text.startswith("# Benchmarks")


def test_benchmark_section_names_command_machine_and_table():
    text = benchmark_section("## X", "scripts/x.py", ["--seeds", "0 1"], 0.0, "what", "| t |")
    assert text.startswith("## X\n\nwhat") and "`python scripts/x.py --seeds '0 1'`" in text
    assert "- machine: " in text and text.rstrip().endswith("| t |")
