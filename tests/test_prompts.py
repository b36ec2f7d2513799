import random

import pytest

from bmike_jax.data import QUERY_TYPES, SAMPLE_DATA_DIR, DataError, load_file, load_pool
from bmike_jax.prompts import (
    SETUPS,
    build_prompt,
    demonstration_indices,
    one_shot_index,
    query_text,
    render_demonstrations,
)

from tests.data_dirs import HAS_REAL, REAL_DIR, needs_real

DATA_DIRS = [SAMPLE_DATA_DIR, pytest.param(REAL_DIR, marks=needs_real)]


def test_setup_names():
  assert SETUPS == ("zero_shot", "one_shot", "few_shot_mixed", "few_shot_specific")


def test_one_shot_index_is_the_reference_draw_and_leaves_global_random_alone():
  saved = random.getstate()
  try:
    random.seed(42)
    reference = random.randint(0, 7)
  finally:
    random.setstate(saved)
  assert reference == 1
  before = random.getstate()
  assert one_shot_index() == 1
  assert random.getstate() == before
  assert all(demonstration_indices("one_shot", q) == (1,) for q in QUERY_TYPES)


def test_zero_shot_and_mixed_indices():
  for q in QUERY_TYPES:
    assert demonstration_indices("zero_shot", q) == ()
    assert demonstration_indices("few_shot_mixed", q) == (7, 6, 5, 4, 3, 2, 1, 0)


def test_metric_specific_indices():
  rel_gen = (0, 1, 8, 9, 16, 17, 24, 25)
  assert demonstration_indices("few_shot_specific", "reliability") == rel_gen
  assert demonstration_indices("few_shot_specific", "generality") == rel_gen
  assert demonstration_indices("few_shot_specific", "locality") == (4, 5, 12, 13, 20, 21, 28, 29)
  assert demonstration_indices("few_shot_specific", "portability") == (6, 7, 14, 15, 22, 23, 30, 31)


@pytest.mark.parametrize("data_dir", DATA_DIRS)
@pytest.mark.parametrize("dataset", ["zsre", "counterfact", "wikifactdiff"])
def test_metric_specific_entries_have_matching_types(data_dir, dataset):
  pool = load_pool(data_dir, dataset)
  types = {
      q: {pool[i].type for i in demonstration_indices("few_shot_specific", q)} for q in QUERY_TYPES
  }
  assert types == {
      "reliability": {"copy", "update"},
      "generality": {"copy", "update"},
      "locality": {"retain"},
      "portability": {"portability"},
  }


def test_unknown_setup_and_query_type():
  with pytest.raises(ValueError) as err:
    demonstration_indices("two_shot", "reliability")
  assert "'two_shot'" in str(
      err.value
  ) and "zero_shot, one_shot, few_shot_mixed, few_shot_specific" in str(err.value)
  with pytest.raises(ValueError, match="unknown query type 'efficacy'"):
    demonstration_indices("zero_shot", "efficacy")


@pytest.mark.parametrize("data_dir", DATA_DIRS)
def test_demonstration_separators_and_case_of_new_fact(data_dir):
  pool = load_pool(data_dir, "counterfact")
  text = render_demonstrations(pool, (3, 0), "th")
  assert text == (
      pool[3].new_fact
      + "\n"
      + pool[3].lines["th"]
      + "\n\n"
      + pool[0].new_fact
      + "\n"
      + pool[0].lines["th"]
      + "\n\n"
  )
  record = load_file(data_dir, "counterfact", "th").records[0]
  for setup, n_demos in [
      ("zero_shot", 0),
      ("one_shot", 1),
      ("few_shot_mixed", 8),
      ("few_shot_specific", 8),
  ]:
    prompt = build_prompt(pool, setup, "th", record, "locality")
    assert prompt.count('New fact: "') == n_demos
    assert prompt.count('New Fact: "') == 1
    assert prompt.count("\n\n") == n_demos
    assert prompt.endswith('" Answer: "') and not prompt.startswith(("<", " ", "\n"))


@pytest.mark.parametrize("data_dir", DATA_DIRS)
def test_mixed_setup_is_first_eight_reversed(data_dir):
  pool = load_pool(data_dir, "zsre")
  record = load_file(data_dir, "zsre", "ru").records[0]
  prompt = build_prompt(pool, "few_shot_mixed", "ru", record, "generality")
  positions = [prompt.index(pool[i].new_fact + "\n" + pool[i].lines["ru"]) for i in range(8)]
  assert positions == sorted(positions, reverse=True)
  assert prompt.startswith(pool[7].new_fact + "\n")
  assert pool[8].new_fact not in prompt


@pytest.mark.parametrize("data_dir", DATA_DIRS)
def test_full_one_shot_prompt_spelled_out(data_dir):
  pool = load_pool(data_dir, "zsre")
  record = load_file(data_dir, "zsre", "de").records[0]
  expected = (
      'New fact: "What did Earl Hooker die of? tuberculosis"\n'
      'Question: "Was war die Todesursache von Earl Hooker?" Answer: "Tuberkulose"\n'
      "\n"
      'New Fact: "When was the inception of IAAF Combined Events Challenge? 2006"\n'
      'Question: "Wann wurde die IAAF Combined Events Challenge ins Leben gerufen?" Answer: "'
  )
  assert build_prompt(pool, "one_shot", "de", record, "reliability") == expected


@pytest.mark.parametrize("data_dir", DATA_DIRS)
def test_full_specific_portability_prompt_spelled_out_in_thai(data_dir):
  pool = load_pool(data_dir, "counterfact")
  record = load_file(data_dir, "counterfact", "th").records[0]
  prompt = build_prompt(pool, "few_shot_specific", "th", record, "portability")
  first_two = (
      'New fact: "Where did May Wright Sewall pass away? Birmingham"\n'
      'Question: "เมืองใดที่มีชื่อเสียงในบทบาทในการปฏิวัติอุตสาหกรรมอาจ Wright Sewall เสียชีวิตไป?" '
      'Answer: "เบอร์มิงแฮม"\n\n'
      'New fact: "Where is Jammu and Kashmir located? Antarctica"\n'
      'Question: "ลักษณะภูมิทัศน์หลักของทวีปที่ตั้งอยู่ที่จัมมูและแคชเมียร์เป็นอย่างไร?" '
      'Answer: "ปกคลุมด้วยน้ำแข็งและหิมะ"\n\n'
  )
  query = (
      'New Fact: "Where does Spike Hughes originate from? Philadelphia"\n'
      'Question: "อาหารที่มีชื่อเสียงอะไรที่เกี่ยวข้องกับเมืองที่ Spike Hughes มาจาก?" Answer: "'
  )
  assert prompt.startswith(first_two)
  assert prompt.endswith(query)
  assert query_text(record, "portability") == query
  assert build_prompt(pool, "zero_shot", "th", record, "portability") == query


def test_query_text_uses_english_edit_and_target_question():
  record = load_file(SAMPLE_DATA_DIR, "zsre", "ja").records[0]
  for q in QUERY_TYPES:
    assert query_text(record, q) == (
        f'New Fact: "{record.en.src} {record.en.alt}"\nQuestion: "{record.query(q)}" Answer: "'
    )


def test_english_target_uses_english_pool_lines():
  pool = load_pool(SAMPLE_DATA_DIR, "wikifactdiff")
  record = load_file(SAMPLE_DATA_DIR, "wikifactdiff", "en").records[0]
  prompt = build_prompt(pool, "one_shot", "en", record, "reliability")
  assert prompt == f"{pool[1].new_fact}\n{pool[1].lines['en']}\n\n" + query_text(
      record, "reliability"
  )
  assert f'Question: "{record.en.src}"' in prompt


def test_language_checks():
  pool = load_pool(SAMPLE_DATA_DIR, "zsre")
  record = load_file(SAMPLE_DATA_DIR, "zsre", "zh").records[0]
  assert build_prompt(pool, "one_shot", "zh-cn", record, "reliability") == build_prompt(
      pool, "one_shot", "zh", record, "reliability"
  )
  with pytest.raises(ValueError, match="differs from the record's target language 'zh'"):
    build_prompt(pool, "one_shot", "ja", record, "reliability")
  with pytest.raises(DataError, match="no line for language 'fr'"):
    render_demonstrations(pool, (0,), "fr")
  with pytest.raises(ValueError, match="pool has 3 entries"):
    build_prompt(pool[:3], "few_shot_mixed", "zh", record, "reliability")
