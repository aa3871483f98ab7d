"""The search (HeadHunter): greedy rounds, how a round allocates its images, paired statistics, checkpoints, torch.distributed sharding and the evaluation on fresh seeds."""
