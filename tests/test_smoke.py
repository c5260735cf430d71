from membench import profile
from membench.backbones.tiny import text_seq, tiny


def test_every_family_profiles_on_fake_and_cpu(family_name):
    model, ov = tiny(family_name)
    seq = text_seq(family_name, 16)
    fake = profile(model, "full", batch_size=2, seq_len=seq, device="fake", target="cpu", overrides=ov)
    cpu = profile(model, "full", batch_size=2, seq_len=seq, device="cpu", overrides=ov)
    assert fake.activation_bytes > 0
    assert fake.layer_bytes == cpu.layer_bytes
