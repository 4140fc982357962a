"""MSF: Motion-guided Sequential Fusion (He et al., CVPR 2023), built stage by stage.

``rpn.CenterPointRPN`` is its single-frame stage (CenterPoint, Yin et al., CVPR 2021): proposals
and BEV features of the current frame. Modules are imported where used (spconv stays out of
package import).
"""
