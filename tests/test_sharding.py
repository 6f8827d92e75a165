from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from models.sharding import murmur2, partition_for


@given(st.binary(max_size=64))
def test_murmur2_matches_the_kafka_clients(key):
    assert murmur2(key) == aiokafka_murmur2(key)


@given(st.binary(max_size=32), st.integers(1, 64))
def test_partition_for_is_the_clients_default_partition(key, n):
    assert partition_for(key, n) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % n
