import hydra
@hydra.main(config_path="pkg://prefopt.conf", config_name="train", version_base=None)
def main(cfg):
    print(cfg)
